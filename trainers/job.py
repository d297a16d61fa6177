"""run_cell: one cell's job on a worker. Wires data -> model -> mesh -> train loop -> eval.

Only plain data crosses this boundary: a CellSpec dict in, a result dict out. Everything
the job measures goes to the tracker (MLflow when the controller hands over a run id).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainers.home import flanscale_home
from trainers.home import tracking_uri as resolve_tracking_uri
from trainers.run_layout import TAG_CELL_KEY, TAG_RESTARTED, cell_params
from trainers.spec import CellSpec, UserError
from trainers.states import CellState
from trainers.process import StopFlag, init_distributed, use_compilation_cache
from trainers.tracking import FanOutTracker, MLflowTracker, NullTracker, Tracker

log = logging.getLogger(__name__)

def _tracker(run_id: str | None, tracking_uri: str | None, home: Path, extra: Sequence[Tracker]) -> Tracker:
    import jax

    if jax.process_index() != 0:
        return NullTracker()
    trackers: list[Tracker] = []
    if run_id:
        trackers.append(MLflowTracker(resolve_tracking_uri(tracking_uri, home), run_id))
    trackers.extend(extra)
    return FanOutTracker(trackers)


def _pretrain_flops(spec: CellSpec) -> float:
    """The base model's pretraining compute: the spec's figure, else the one measured by
    `flanscale pretrain` and stored beside the checkpoint."""
    if spec.pretrain_flops > 0:
        return float(spec.pretrain_flops)
    from trainers.accounting import measured_pretrain_flops

    return measured_pretrain_flops(spec.init_checkpoint) if spec.init_checkpoint else 0.0


def run_cell(
    spec: dict[str, Any],
    run_id: str | None = None,
    tracking_uri: str | None = None,
    home: str | os.PathLike | None = None,
    extra_trackers: Sequence[Tracker] = (),
    should_stop: Callable[[], bool] | threading.Event | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Trains (resuming if a checkpoint exists) and evaluates one cell (the README's "Training one cell").

    `steps` overrides spec.optim.steps (a debugging run that stops early); the cell key,
    and so the checkpoint directory, stays that of the spec.
    """
    init_distributed()
    cell = CellSpec.from_dict(spec) if isinstance(spec, dict) else spec
    home_path = flanscale_home(home)
    use_compilation_cache(home_path)
    tracker = _tracker(run_id, tracking_uri, home_path, extra_trackers)
    stop = StopFlag(should_stop)
    stop.install()
    try:
        with tracker.system_metrics():
            return _run(cell, home_path, tracker, stop, steps)
    finally:
        stop.uninstall()


def flops_fraction(finetune: float, pretrain: float) -> float | None:
    return finetune / pretrain if pretrain > 0 and math.isfinite(pretrain) else None


def _run(cell: CellSpec, home: Path, tracker: Tracker, stop: StopFlag, steps: int | None) -> dict[str, Any]:
    import jax

    from trainers import accounting, models
    from trainers.cell_logging import log_evaluation, log_training_data
    from trainers.checkpoint import Checkpointer, checkpoint_dir
    from trainers.data import pipeline
    from trainers.loop import train_loop
    from trainers.train import abstract_initial_state, init_state

    started = time.perf_counter()
    key = cell.key()
    total_steps = int(steps if steps is not None else cell.optim.steps)
    model_cfg = _model_config(cell, models)
    family = model_cfg.family
    li, lt = cell.data.input_length, cell.data.target_length
    n_proc, pid = jax.process_count(), jax.process_index()
    gb = cell.optim.batch_size
    if gb % n_proc or (gb // cell.optim.micro_batches) % max(cell.mesh.data * cell.mesh.fsdp, 1):
        raise UserError(
            f"optim.batch_size: {gb} must split evenly over {n_proc} processes and "
            f"{cell.optim.micro_batches} micro-batches of data x fsdp = {cell.mesh.data * cell.mesh.fsdp} devices"
        )

    if cell.data.task_count == 0 or total_steps == 0:
        return _evaluate_base(cell, home, tracker, model_cfg, started)

    # Each process builds only its own contiguous rows of the global batch, which are the
    # rows its devices hold under the batch sharding; the loop assembles the global array.
    batches = pipeline.make_batches(
        cell.data, family, gb, cell.seed, home, process_index=pid, process_count=n_proc,
        vocab_size=model_cfg.vocab_size,
    )
    vocab = batches.tokenizer.vocab_size
    if vocab > model_cfg.vocab_size:
        raise UserError(
            f"model.vocab_size: {model_cfg.vocab_size} is smaller than the tokenizer's {vocab} "
            f"(data.tokenizer={cell.data.tokenizer!r})"
        )

    setup = make_setup(model_cfg, cell.optim, cell.mesh, li, lt, pipeline.packing_efficiency)
    ckpt = Checkpointer(checkpoint_dir(home, key), keep=cell.checkpoint.keep)
    if pid == 0:  # the directory alone then evaluates and exports (trainers/export.py)
        from trainers.export import write_cell_record

        write_cell_record(ckpt.directory, cell, model_cfg, batches.tokenizer)
    counters = {"input_tokens": 0.0, "target_tokens": 0.0}
    restored = None
    saved_steps = ckpt.steps()
    if saved_steps:
        restored = ckpt.restore(abstract_initial_state(setup, models.param_shapes(model_cfg)))
        if restored is None:
            tracker.set_tags({TAG_RESTARTED: f"every checkpoint (steps {', '.join(map(str, saved_steps))}) "
                                             "was damaged; trained again from step 0"})
    if restored is None:
        state = init_state(setup, _initial_params(cell, model_cfg, setup, models), cell.seed)
    else:
        step0, state, meta = restored
        batches.restore(meta["data"])
        counters.update(meta.get("counters", {}))
        log.info("cell %s: resumed from step %d", key, step0)

    n_params = accounting.param_count(model_cfg)
    # Planned compute counts every position of the packed rows (the paper's convention);
    # for decoder-only rows of input_length + target_length, train_flops adds both.
    planned_in, planned_tgt = float(total_steps * gb * li), float(total_steps * gb * lt)
    finetune_flops = accounting.train_flops(model_cfg, planned_in, planned_tgt)
    pretrain_flops = _pretrain_flops(cell)
    fraction = flops_fraction(finetune_flops, pretrain_flops)
    tracker.set_tags({TAG_CELL_KEY: key})
    tracker.log_params(cell_params(cell, n_params))
    log_training_data(tracker, cell.data, batches.stream.mixture)
    once = {"flops/finetune": finetune_flops, "flops/pretrain": pretrain_flops}
    if fraction is not None:
        once["flops/fraction"] = fraction
    tracker.log_metrics(once, 0)

    # Packing runs on a background thread, a few batches ahead of the devices; its state()
    # is that after the last batch the loop took, which is what a checkpoint must hold.
    prefetched = pipeline.Prefetcher(batches)

    def save(step: int, st: Any, final: bool) -> None:
        ckpt.save(step, st, {"key": key, "data": prefetched.state(), "counters": dict(counters)}, final=final)

    evaluate = _evaluator(cell, model_cfg, batches.tokenizer)

    def evaluate_during(step: int, st: Any) -> None:
        tracker.log_metrics(evaluate(st["params"])[0], step)

    timing = {"time/setup_s": time.perf_counter() - started}
    trained_from = time.perf_counter()
    try:
        result = train_loop(
            setup,
            state,
            prefetched,
            total_steps=total_steps,
            log_metrics=tracker.log_metrics,
            save=save,
            every_steps=cell.checkpoint.every_steps,
            should_stop=stop,
            evaluate=evaluate_during if evaluate is not None else None,
            eval_every=cell.eval.every_steps,
            counters=counters,
        )
    finally:
        prefetched.close()
        ckpt.close()

    timing["time/train_s"] = time.perf_counter() - trained_from
    measured = accounting.train_flops(model_cfg, counters["input_tokens"], counters["target_tokens"])
    eval_metrics: dict[str, float] = {}
    if result.status == CellState.FINISHED:
        tracker.log_metrics({"flops/finetune_measured": measured}, result.steps)
        if evaluate is not None:
            evaluated_from = time.perf_counter()
            eval_metrics, details = evaluate(result.state["params"])
            timing["time/eval_s"] = time.perf_counter() - evaluated_from
            tracker.log_metrics(eval_metrics, result.steps)
            log_evaluation(tracker, details, result.steps)
        tracker.log_metrics(timing, result.steps)
    return {
        "key": key,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "finetune_flops": finetune_flops,
        "pretrain_flops": pretrain_flops,
        "flops_fraction": fraction,
        "tokens": counters["input_tokens"] + counters["target_tokens"],
        "eval": eval_metrics,
        "status": result.status,
    }


def _evaluate_base(cell: CellSpec, home: Path, tracker: Tracker, model_cfg: Any, started: float) -> dict[str, Any]:
    """The base model's cell (task count 0): no finetuning, only its held-out scores.

    It is the reference each finetuned cell of the same size is compared with, so it logs
    the same params and FLOPs metrics (finetune compute 0) as a trained cell.
    """
    from trainers import accounting, models
    from trainers.cell_logging import log_evaluation
    from trainers.data.tokenizer import load_tokenizer

    key = cell.key()
    tokenizer = load_tokenizer(cell.data, home, vocab_size=model_cfg.vocab_size)
    setup = make_setup(model_cfg, cell.optim, cell.mesh, cell.data.input_length, cell.data.target_length)
    params = _initial_params(cell, model_cfg, setup, models)
    pretrain_flops = _pretrain_flops(cell)
    tracker.set_tags({TAG_CELL_KEY: key})
    tracker.log_params(cell_params(cell, accounting.param_count(model_cfg)))
    tracker.log_metrics({"flops/finetune": 0.0, "flops/pretrain": pretrain_flops}, 0)
    evaluate = _evaluator(cell, model_cfg, tokenizer)
    timing = {"time/setup_s": time.perf_counter() - started}
    evaluated_from = time.perf_counter()
    eval_metrics, details = evaluate(params) if evaluate is not None else ({}, None)
    timing["time/eval_s"] = time.perf_counter() - evaluated_from
    if eval_metrics:
        tracker.log_metrics(eval_metrics, 0)
        log_evaluation(tracker, details, 0)
    tracker.log_metrics(timing, 0)
    return {
        "key": key,
        "steps": 0,
        "final_loss": None,
        "finetune_flops": 0.0,
        "pretrain_flops": pretrain_flops,
        "flops_fraction": flops_fraction(0.0, pretrain_flops),
        "tokens": 0.0,
        "eval": eval_metrics,
        "status": CellState.FINISHED,
    }


def make_setup(model_cfg: Any, optim: Any, mesh_cfg: Any, li: int, lt: int, packing_efficiency=None) -> Any:
    """Model, optimizer, mesh and shardings for a train loop (see trainers.train.TrainSetup)."""
    from trainers import accounting, models
    from trainers import partitioning
    from trainers.optim import build_optimizer
    from trainers.train import TrainSetup

    mesh = partitioning.make_mesh(mesh_cfg)
    return TrainSetup(
        apply_fn=models.build(model_cfg).apply,
        loss_fn=models.loss_fn(model_cfg),
        optim=optim,
        optimizer=build_optimizer(optim),
        mesh=mesh,
        param_shardings=partitioning.param_shardings(model_cfg, mesh),
        batch_sharding=partitioning.batch_sharding(mesh),
        dropout=model_cfg.dropout_rate > 0,
        global_batch=optim.batch_size,
        input_length=li,
        target_length=lt,
        analytic_step_flops=accounting.step_flops(model_cfg, optim.batch_size, li, lt),
        peak_flops_total=accounting.peak_flops(mesh_cfg.accelerator, model_cfg.dtype) * mesh.size,
        packing_efficiency=packing_efficiency,
        trace_context=lambda: partitioning.activation_sharding(mesh),
        xla_counts_layers=not model_cfg.scan_layers,
        # Frozen configs identify the step function; the run length matters only to a
        # cosine schedule, so cells differing only in steps share one compiled step.
        cache_key=(model_cfg, _step_optim(optim), mesh_cfg, li, lt, tuple(d.id for d in mesh.devices.flat)),
    )


def _step_optim(optim: Any) -> Any:
    import dataclasses

    return optim if optim.schedule == "cosine" else dataclasses.replace(optim, steps=0)


def _model_config(cell: CellSpec, models: Any) -> Any:
    """The spec's model, or the architecture of cell.init_checkpoint with the spec's name and
    numerics (trainers.architecture.trained_model, by which the planner counts it too)."""
    from trainers.architecture import trained_model

    if not cell.init_checkpoint:
        return cell.model
    path = Path(cell.init_checkpoint)
    if not path.exists():
        raise UserError(f"init_checkpoint: {str(path)!r} does not exist")
    return trained_model(cell.model, models.load_config(path))


def _initial_params(cell: CellSpec, model_cfg: Any, setup: Any, models: Any) -> Any:
    """Parameters created (or restored) directly in their sharded layout."""
    import jax

    if cell.init_checkpoint:
        _, params = models.load_pretrained(Path(cell.init_checkpoint), setup.param_shardings, model_cfg.scan_layers)
        return params
    li, lt = cell.data.input_length, cell.data.target_length
    return param_init(model_cfg, setup, li, lt)(jax.random.PRNGKey(cell.seed))


def param_init(model_cfg: Any, setup: Any, li: int, lt: int) -> Callable:
    """Jitted random init writing each parameter straight into its shard (no host copy)."""
    import jax

    from trainers import models
    from trainers.train import cached_jit

    return cached_jit(
        ("param_init", model_cfg, li, lt, setup.mesh),
        lambda: jax.jit(lambda rng: models.init_params(model_cfg, rng, li, lt), out_shardings=setup.param_shardings),
    )


def _evaluator(cell: CellSpec, model_cfg: Any, tokenizer: Any) -> Callable[[Any], tuple[dict[str, float], Any]] | None:
    """params -> (the held-out metrics: eval/loss (when cell.eval.loss) and the benchmarks;
    the benchmarks' trainers.eval.runner.EvalRun, None without benchmarks).

    Evaluation runs on the cell's mesh with the parameters as training shards them (every
    process takes part, as in a train step); only token ids and scores reach the hosts."""
    e = cell.eval
    if not e.benchmarks and not e.loss:
        return None
    from trainers import partitioning
    from trainers.cell_logging import PREDICTIONS_PER_MODE
    from trainers.eval.heldout_loss import HeldoutLoss
    from trainers.eval.placement import EvalMesh
    from trainers.eval.runner import evaluate_run

    li, lt = cell.data.input_length, cell.data.target_length
    placement = EvalMesh(partitioning.make_mesh(cell.mesh))
    loss = HeldoutLoss(model_cfg, tokenizer, li, lt, e.loss_examples, placement) if e.loss else None

    def run(params: Any) -> tuple[dict[str, float], Any]:
        out = loss(params) if loss is not None else {}
        if not e.benchmarks:
            return out, None
        # Prompts longer than the trained input length are cut from the left, as in training.
        details = evaluate_run(e, model_cfg, params, tokenizer, max_prompt_tokens=li, batch_size=e.batch_size,
                               predictions=PREDICTIONS_PER_MODE, placement=placement)
        return {**out, **details.metrics}, details

    return run
