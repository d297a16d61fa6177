"""The train loop of one cell: runs jitted steps (trainers/train.py) until the last step or a
stop request, logging each step's metrics one step late, checkpointing and evaluating on
schedule, and raising on a non-finite loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from trainers.states import CellState
from trainers.train import Batch, NonFiniteLoss, State, TrainSetup, compile_step, to_global


@dataclass
class LoopResult:
    state: State
    status: CellState  # FINISHED or PREEMPTED
    steps: int
    final_loss: float
    # Non-padding tokens trained on over the whole run (inputs = useful tokens that carry
    # no loss weight), for the measured finetuning FLOPs.
    counters: dict[str, float]
    xla_step_flops: float


class _StepMetrics:
    """The metrics of the step in flight, read one step late.

    The host reads step N's metrics only once it has launched step N+1, so it never waits
    for the step it just launched. A step's time is the interval between the completions
    of consecutive steps as the host sees them: the device's pace while the host keeps up,
    the host's when it does not.
    """

    def __init__(self, setup: TrainSetup, log_metrics: Callable[[dict[str, float], int], None],
                 counters: dict[str, float]) -> None:
        self.setup, self.log_metrics, self.counters = setup, log_metrics, counters
        self.loss = float(counters.get("loss", float("nan")))  # the last step's, across a resume
        self._pending: tuple[int, dict[str, jnp.ndarray], float | None] | None = None
        self._since = time.perf_counter()

    def push(self, step: int, metrics: dict[str, jnp.ndarray], packing_efficiency: float | None) -> None:
        self.flush()
        self._pending = (step, metrics, packing_efficiency)

    def restart_clock(self) -> None:
        """After host work (compiling, saving, evaluating) that no step's time should include."""
        self._since = time.perf_counter()

    def flush(self) -> None:
        """Logs the pending step's metrics; raises NonFiniteLoss if its loss is not finite."""
        if self._pending is None:
            return
        step, metrics, efficiency = self._pending
        self._pending = None
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        dt, self._since = now - self._since, now
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss} at step {step}")
        self.loss = self.counters["loss"] = loss
        n_tgt, useful = float(metrics["target_tokens"]), float(metrics["useful_tokens"])
        self.counters["target_tokens"] += n_tgt
        self.counters["input_tokens"] += useful - n_tgt
        s = self.setup
        out = {
            "train/loss": loss,
            "train/cross_entropy": float(metrics["cross_entropy"]),
            "train/z_loss": float(metrics["z_loss"]),
            "train/grad_norm": float(metrics["grad_norm"]),
            "train/step_s": dt,
            "train/tokens_per_s": s.global_batch * (s.input_length + s.target_length) / dt,
            "train/useful_tokens_per_s": useful / dt,
        }
        if efficiency is not None:
            out["train/packing_efficiency"] = efficiency
        if s.peak_flops_total > 0 and s.analytic_step_flops > 0:
            out["train/mfu"] = s.analytic_step_flops / dt / s.peak_flops_total
        self.log_metrics(out, step)


def train_loop(
    setup: TrainSetup,
    state: State,
    batches: Iterator[Batch],
    *,
    total_steps: int,
    log_metrics: Callable[[dict[str, float], int], None],
    save: Callable[[int, State, bool], None] | None = None,
    every_steps: int = 0,
    should_stop: Callable[[int], bool] | None = None,
    evaluate: Callable[[int, State], None] | None = None,
    eval_every: int = 0,
    counters: dict[str, float] | None = None,
) -> LoopResult:
    """Runs optimizer steps until `total_steps` (1-based step numbers) or a stop request.

    Steps are launched without waiting for the previous one; step N's metrics are logged
    once step N+1 is launched (the last step's at the end), so a non-finite loss raises
    NonFiniteLoss one step later, still naming its step.
    `should_stop(step)` is asked before launching each step; when it answers True the loop
    saves the state of the steps done and returns "preempted".
    `save(step, state, final)` writes a checkpoint (the caller captures the data state);
    it is called every `every_steps`, at the end (final), and on a stop request (final).
    `evaluate(step, state)` runs every `eval_every` steps, except the last.
    `counters` (input_tokens, target_tokens) is updated in place so a checkpoint written
    by `save` can carry the totals of a run across a resume.
    """
    counters = counters if counters is not None else {}
    counters.setdefault("input_tokens", 0.0)
    counters.setdefault("target_tokens", 0.0)
    metrics_log = _StepMetrics(setup, log_metrics, counters)
    start = int(jax.device_get(state["step"]))
    compiled = None
    xla_flops = float("nan")
    step = start
    for step in range(start + 1, total_steps + 1):
        if should_stop is not None and should_stop(step):
            metrics_log.flush()
            if save is not None:
                save(step - 1, state, True)
            return LoopResult(state, CellState.PREEMPTED, step - 1, metrics_log.loss, counters, xla_flops)
        raw = next(batches)
        batch = to_global(raw, setup)
        if compiled is None:
            compiled, xla_flops = compile_step(setup, state, batch)
            flops = {"train/analytic_step_flops": setup.analytic_step_flops}
            if setup.xla_counts_layers:
                flops["train/xla_step_flops"] = xla_flops
            log_metrics(flops, step)
            metrics_log.restart_clock()
        state, metrics = compiled(state, batch)
        efficiency = float(setup.packing_efficiency(raw)) if setup.packing_efficiency is not None else None
        metrics_log.push(step, metrics, efficiency)
        eval_now = evaluate is not None and eval_every > 0 and step % eval_every == 0 and step != total_steps
        save_now = save is not None and every_steps > 0 and step % every_steps == 0 and step != total_steps
        if eval_now or save_now:
            # Both need this step's result anyway; reading its metrics first means no
            # checkpoint or evaluation is ever made of a state with a non-finite loss.
            metrics_log.flush()
            if eval_now:
                evaluate(step, state)
            if save_now:
                save(step, state, False)
            metrics_log.restart_clock()
    metrics_log.flush()
    if save is not None and total_steps > start:
        save(total_steps, state, True)
    return LoopResult(state, CellState.FINISHED, max(step, start), metrics_log.loss, counters, xla_flops)
