"""The accelerator benchmark of the trainer, in one process: throughput and MFU of a
T5-large-shaped and a ~1.5B PaLM-style model in bfloat16, bfloat16 against float32 loss over
the same steps, and sharded decoding on the trained parameters.

Needs only jax/flax/optax/orbax and the trainers package plus the model catalog (no Ray,
MLflow or Hydra), so it runs in the accelerator image as it is:

    python bench/gpu_bench.py --accelerator h200-141g --out DIR     # what bench/gpu.sh runs
    python bench/gpu_bench.py --smoke                               # tiny shapes, any CPU

Writes DIR/gpu_bench.json (DIR/gpu_bench-<part>.json with --only) and prints the same JSON.
A device's peak memory is the process's, so bench/gpu.sh runs each part in its own process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

# name -> (catalog preset, input length, target length, rows per step); the decoder's rows
# hold input + target = 2048 positions.
SHAPES = {
    "t5-large": ("t5-large", 2048, 512, 32),
    "palm-1b": ("palm-1b", 1536, 512, 16),
}
LOSS_SHAPE = ("t5-base", 512, 128, 16)  # bf16 against fp32: a model whose fp32 run stays short
SMOKE_LENGTHS = (32, 16, 4)  # input, target, rows


def model_config(preset: str, dtype: str, smoke: bool):
    """The preset's architecture computing in `dtype` without dropout; with `smoke`, a tiny
    model of the same family."""
    from orchestrator.catalog import get_preset

    cfg = get_preset(preset).model
    if smoke:
        cfg = dataclasses.replace(cfg, name=f"smoke-{cfg.family}", vocab_size=384, d_model=64, d_ff=128, num_heads=2,
                                  d_kv=32, num_encoder_layers=2 if cfg.family == "t5" else 0, num_decoder_layers=2)
    return dataclasses.replace(cfg, dtype=dtype, dropout_rate=0.0)


def synthetic_batches(family: str, vocab: int, rows: int, li: int, lt: int, steps: int, seed: int) -> list[dict]:
    """Packed batches of random examples (2-4 per row), laid out by the trainer's packer."""
    import numpy as np

    from trainers.data.packing import build_batch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        batch_rows = []
        for _ in range(rows):
            k = int(rng.integers(2, 5))
            # k equal examples fill the row (decoder-only rows hold each input + target in turn).
            n_in, n_tgt = max(1, li // k), max(1, lt // k)
            row = [(rng.integers(2, vocab, n_in).tolist(), rng.integers(2, vocab, n_tgt).tolist()) for _ in range(k)]
            batch_rows.append(row)
        out.append(build_batch(batch_rows, family, li, lt))
    return out


def micro_batches(cfg, rows: int, li: int, lt: int, accelerator: str) -> int:
    """The fewest micro-batches (a power of two) with which the planner's memory model fits
    the step on one device of `accelerator`, as `flanscale plan` would choose them."""
    from trainers.accounting import GIB, get_accelerator, memory_per_device
    from trainers.spec import MeshConfig

    usable = get_accelerator(accelerator).memory_gib * GIB * 0.85
    micro = 1
    while micro < rows and memory_per_device(cfg, MeshConfig(), rows // micro, li, lt, cfg.remat,
                                             micro_batches=micro)["total"] > usable:
        micro *= 2
    return micro


def train(cfg, rows: int, li: int, lt: int, batches: list[dict], accelerator: str, seed: int = 0):
    """Trains on `batches` with the trainer's own loop -> (per-step metrics, final state, setup)."""
    import jax

    from trainers.data.packing import packing_efficiency
    from trainers.job import make_setup, param_init
    from trainers.spec import MeshConfig, OptimConfig
    from trainers.loop import train_loop
    from trainers.train import init_state

    n = len(jax.devices())
    mesh = MeshConfig(accelerator=accelerator, devices=n, data=n)
    optim = OptimConfig(batch_size=rows, learning_rate=1e-3, micro_batches=micro_batches(cfg, rows, li, lt, accelerator))
    setup = make_setup(cfg, optim, mesh, li, lt, packing_efficiency)
    state = init_state(setup, param_init(cfg, setup, li, lt)(jax.random.PRNGKey(seed)), seed)
    logs: list[dict] = []
    result = train_loop(setup, state, iter(batches), total_steps=len(batches), log_metrics=lambda m, s: logs.append(m))
    return [m for m in logs if "train/loss" in m], result.state, setup


def peak_memory_gib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats()  # None on backends that keep no statistics (CPU)
    return stats["peak_bytes_in_use"] / 1024**3 if stats and "peak_bytes_in_use" in stats else None


def throughput(name: str, args) -> dict:
    preset, li, lt, rows = SHAPES[name]
    if args.smoke:
        li, lt, rows = SMOKE_LENGTHS
    cfg = model_config(preset, "bfloat16", args.smoke)
    batches = synthetic_batches(cfg.family, cfg.vocab_size, rows, li, lt, args.steps + 1, seed=1)
    t0 = time.perf_counter()
    steps, state, setup = train(cfg, rows, li, lt, batches, args.accelerator)
    wall = time.perf_counter() - t0
    timed = steps[1:]  # the first step carries compilation and warm-up
    step_s = statistics.median(m["train/step_s"] for m in timed)
    return {
        "model": cfg.name, "family": cfg.family, "dtype": cfg.dtype, "input_length": li, "target_length": lt,
        "rows": rows, "micro_batches": setup.optim.micro_batches, "steps": len(timed), "step_s": step_s, "tokens_per_s": rows * (li + lt) / step_s,
        "mfu": statistics.median(m["train/mfu"] for m in timed) if "train/mfu" in timed[0] else None,
        "peak_memory_gib": peak_memory_gib(), "analytic_step_flops": setup.analytic_step_flops,
        "wall_s_incl_compile": wall, "final_loss": timed[-1]["train/loss"],
        "decode": decode(cfg, state["params"], setup, li),
    }


def decode(cfg, params, setup, li: int) -> dict:
    """Greedy decoding of a few prompts on the training mesh, parameters left sharded."""
    import jax
    import numpy as np

    from trainers.eval.decoding import generate_ids
    from trainers.eval.placement import EvalMesh

    prompts = np.random.default_rng(2).integers(2, cfg.vocab_size, (4, min(li, 64))).astype(np.int32)
    kwargs = dict(max_new_tokens=16, placement=EvalMesh(setup.mesh))
    generate_ids(cfg, params, prompts, jax.random.PRNGKey(0), **kwargs)  # compile
    t0 = time.perf_counter()
    ids = generate_ids(cfg, params, prompts, jax.random.PRNGKey(0), **kwargs)
    dt = time.perf_counter() - t0
    return {"prompts": len(prompts), "new_tokens": int(ids.shape[1]), "s": dt,
            "tokens_per_s": ids.size / dt, "first_row": ids[0].tolist()}


def loss_parity(args) -> dict:
    """bf16 and fp32 from the same initial weights over the same batches: the loss curves."""
    preset, li, lt, rows = LOSS_SHAPE
    if args.smoke:
        li, lt, rows = SMOKE_LENGTHS
    curves = {}
    for dtype in ("float32", "bfloat16"):
        cfg = model_config(preset, dtype, args.smoke)
        batches = synthetic_batches(cfg.family, cfg.vocab_size, rows, li, lt, args.loss_steps, seed=3)
        steps, _, _ = train(cfg, rows, li, lt, batches, args.accelerator)
        curves[dtype] = [m["train/loss"] for m in steps]
    f32, bf16 = curves["float32"], curves["bfloat16"]
    return {"model": preset if not args.smoke else "smoke-t5", "steps": len(f32), "loss_float32": f32,
            "loss_bfloat16": bf16, "max_abs_diff": max(abs(a - b) for a, b in zip(f32, bf16)),
            "final_rel_diff": abs(f32[-1] - bf16[-1]) / abs(f32[-1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: check the script on any machine")
    ap.add_argument("--accelerator", default="h200-141g", help="whose peak FLOP/s MFU is measured against")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model (after one warm-up step)")
    ap.add_argument("--loss-steps", type=int, default=20, help="steps of the bf16 against fp32 loss comparison")
    ap.add_argument("--only", choices=(*SHAPES, "loss"), action="append", help="run only these parts (repeatable)")
    ap.add_argument("--out", default="bench-out", help="directory for the JSON")
    args = ap.parse_args(argv)
    import jax

    parts = args.only or [*SHAPES, "loss"]
    out: dict = {"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
                 "accelerator": args.accelerator, "smoke": args.smoke}
    for part in parts:
        t0 = time.perf_counter()
        try:
            out[part] = loss_parity(args) if part == "loss" else throughput(part, args)
        except Exception as e:  # report what ran; one part's failure must not lose the others
            out[part] = {"error": f"{type(e).__name__}: {e}"[:500]}
        out[part]["part_s"] = time.perf_counter() - t0
        print(f"{part}: {out[part]['part_s']:.0f} s", file=sys.stderr, flush=True)
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    name = f"gpu_bench-{'-'.join(args.only)}.json" if args.only else "gpu_bench.json"
    (path / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 1 if any("error" in v for v in out.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
