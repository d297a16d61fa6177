"""The optimizer of a finetuning cell: Adafactor at a constant learning rate, T5X style.

Flan finetuning (paper Appendix E) uses Adafactor with T5X defaults and a constant
learning rate; AdamW and SGD and the warmup/cosine schedules exist for comparison runs.
Gradient accumulation over `micro_batches` is not done here but inside the jitted train
step (trainers/train.py), which sums micro-batch gradients before one optimizer update so
the result equals the full-batch update.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

# The choices are listed once, in trainers.spec, which the control plane checks specs against.
from trainers.spec import OPTIMIZERS, SCHEDULES, OptimConfig, UserError  # noqa: F401


def build_schedule(cfg: OptimConfig) -> Callable[[int], float]:
    """Learning rate as a function of the optimizer step (0-based, as optax counts)."""
    lr = float(cfg.learning_rate)
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"optim.schedule: unknown {cfg.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if lr <= 0:
        raise UserError(f"optim.learning_rate: {cfg.learning_rate!r} must be > 0")
    if cfg.warmup_steps < 0:
        raise UserError(f"optim.warmup_steps: {cfg.warmup_steps!r} must be >= 0")
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    warmup = int(cfg.warmup_steps)
    if cfg.schedule == "linear_warmup_constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        # Start above 0 so the first update is not a no-op (T5X's rsqrt warmup does the same).
        ramp = optax.linear_schedule(lr / warmup, lr, warmup)
        return optax.join_schedules([ramp, optax.constant_schedule(lr)], [warmup])
    decay_steps = max(int(cfg.steps), warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=lr / max(warmup, 1) if warmup else lr,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=decay_steps,
        end_value=0.0,
    )


def build_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """OptimConfig -> optax transformation (global-norm clipping first when grad_clip > 0)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"optim.optimizer: unknown {cfg.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if cfg.micro_batches < 1 or cfg.batch_size % cfg.micro_batches:
        raise UserError(
            f"optim.micro_batches: {cfg.micro_batches!r} must be >= 1 and divide batch_size {cfg.batch_size}"
        )
    schedule = build_schedule(cfg)
    if cfg.optimizer == "adafactor":
        # T5X defaults: second-moment decay exponent 0.8, factored second moments for
        # matrices whose dims are both >= factored_min_dim, no first moment (saves a copy
        # of the parameters), updates scaled by the parameter RMS and clipped to RMS 1.
        opt = per_layer(optax.adafactor(
            learning_rate=schedule,
            min_dim_size_to_factor=int(cfg.factored_min_dim),
            decay_rate=float(cfg.decay_rate),
            multiply_by_parameter_scale=True,
            clipping_threshold=1.0,
            momentum=None,
            factored=True,
        ))
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    else:
        opt = optax.sgd(schedule)
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip)), opt)
    return opt


def _stack_label(path) -> str:
    """"<path>/layers" for a leaf of the scanned stack at that path, else "other"."""
    keys = [str(getattr(k, "key", k)) for k in path]
    return "/".join(keys[: keys.index("layers") + 1]) if "layers" in keys else "other"


def per_layer(opt: optax.GradientTransformation) -> optax.GradientTransformation:
    """`opt` applied to each layer of a scanned stack (leaves under a `layers` key, with a
    leading layers axis) as to an unrolled layer's own tensor. Adafactor's factoring, its
    parameter-RMS scaling and its update clipping are per tensor, so without this a scanned
    model would train differently from the same model unrolled. Each stack is mapped on its
    own (stacks may differ in depth); trees without a stack get `opt` itself and its state."""
    layers = optax.GradientTransformation(jax.vmap(opt.init), jax.vmap(opt.update))

    def pick(tree) -> optax.GradientTransformation:
        labels = jax.tree_util.tree_map_with_path(lambda path, _: _stack_label(path), tree)
        stacks = set(jax.tree.leaves(labels)) - {"other"}
        if not stacks:
            return opt
        return optax.multi_transform({"other": opt, **{name: layers for name in sorted(stacks)}}, labels)

    return optax.GradientTransformation(lambda params: pick(params).init(params),
                                        lambda updates, state, params=None: pick(updates).update(updates, state, params))
