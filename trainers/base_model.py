"""Base models for a sweep to finetune: `pretrain` trains a catalog architecture from scratch
with T5 span corruption and saves it where a cell's `init_checkpoint` can point.

It reuses the cell job's setup (mesh, shardings, optimizer, jitted step and loop), so a base
model is trained by exactly the code that finetunes it, and its pretrain.json records the
measured compute in the same convention as a cell's `flops/finetune`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainers.home import flanscale_home
from trainers.job import make_setup, param_init
from trainers.process import init_distributed
from trainers.spec import UserError
from trainers.tracking import NullTracker, Tracker


def pretrain(
    model_cfg: Any,
    out: str | os.PathLike,
    *,
    steps: int,
    batch_size: int = 16,
    input_length: int = 128,
    target_length: int = 32,
    learning_rate: float = 1e-2,
    seed: int = 0,
    corpus: str | None = None,
    tokenizer: str = "byte",
    home: str | os.PathLike | None = None,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Pretrains a small base model with T5 span corruption and saves it to `out`.

    Writes out/model.json + out/params (trainers.models.save_pretrained) and out/pretrain.json
    with the measured compute, so cells finetuning from it report a measured FLOPs fraction.
    """
    started = time.perf_counter()
    init_distributed()
    import jax

    from trainers import accounting, models
    from trainers.data import pipeline
    from trainers.data.pretrain import span_corruption_batches
    from trainers.data.tokenizer import load_tokenizer
    from trainers.spec import DataConfig, MeshConfig, OptimConfig
    from trainers.loop import train_loop
    from trainers.train import init_state

    from trainers.families import FAMILIES, family_of

    if family_of(model_cfg).pretrain_objective != "span_corruption":
        able = [f.name for f in FAMILIES if f.pretrain_objective == "span_corruption"]
        raise UserError(f"model.family: span corruption pretrains {', '.join(able)} models only, not {model_cfg.family!r}")
    tracker = tracker or NullTracker()
    home = flanscale_home(home)
    data = DataConfig(tokenizer=tokenizer, input_length=input_length, target_length=target_length)
    tok = load_tokenizer(data, home, vocab_size=model_cfg.vocab_size)
    batches = span_corruption_batches(
        tok, model_cfg.family, batch_size, input_length, target_length, seed, model_cfg.vocab_size, corpus,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    optim = OptimConfig(batch_size=batch_size, learning_rate=learning_rate, steps=steps)
    mesh_cfg = MeshConfig(devices=jax.device_count(), hosts=jax.process_count(), data=jax.device_count())
    setup = make_setup(model_cfg, optim, mesh_cfg, input_length, target_length, pipeline.packing_efficiency)
    params = param_init(model_cfg, setup, input_length, target_length)(jax.random.PRNGKey(seed))
    state = init_state(setup, params, seed)
    tracker.log_params({"model": model_cfg.name, "params": accounting.param_count(model_cfg), "steps": steps,
                        "batch_size": batch_size, "learning_rate": learning_rate, "objective": "span_corruption"})
    result = train_loop(setup, state, batches, total_steps=steps, log_metrics=tracker.log_metrics)
    c = result.counters
    n_params = accounting.param_count(model_cfg)
    summary = {
        "model": model_cfg.name,
        "params": n_params,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "input_tokens": c["input_tokens"],
        "target_tokens": c["target_tokens"],
        "tokens": c["input_tokens"] + c["target_tokens"],
        # Same convention as a cell's finetuning FLOPs (6 x parameters each token passes
        # through), so flops/fraction compares like with like...
        "flops": accounting.train_flops(model_cfg, c["input_tokens"], c["target_tokens"]),
        # ...and the all-parameters shorthand (tokens x 6 x params) for reference.
        "flops_6nd": 6.0 * n_params * (c["input_tokens"] + c["target_tokens"]),
        "objective": "span_corruption",
        "tokenizer": tokenizer,
        "corpus": corpus or "suite",
        "seconds": round(time.perf_counter() - started, 1),  # wall time, compilation included
    }
    out = Path(out).absolute()
    models.save_pretrained(out, model_cfg, result.state["params"])
    if jax.process_index() == 0:
        (out / "pretrain.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tracker.log_metrics({"flops/pretrain": summary["flops"]}, result.steps)
    return {**summary, "out": str(out)}
