"""Compile time of the train step against depth, scanned layers vs unrolled.

For each family and depth, builds a cell's train step exactly as a job does
(trainers.aot.compile_cell: make_setup, then compile_step lowered from abstract shapes) and
times lowering plus XLA compilation. With `model.scan_layers` the program holds one layer
whatever the depth, so its compile time stays flat; unrolled, it grows with the depth. A
T5 model gets the depth in each of its two stacks.

    python bench/compile.py [--layers 4 8 16 32] [--families decoder t5] [--d-model 64]

Prints one JSON object: {"config": ..., "<family>": {"scanned": {layers: s}, "unrolled": {...}}}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


# One small architecture per family; the benchmark varies only the depth of its stacks.
BASES = {
    "t5": dict(family="t5", num_encoder_layers=1, num_decoder_layers=1),
    "decoder": dict(family="decoder", num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=1,
                    tie_embeddings=True, parallel_block=True),
}


def model_config(family: str, layers: int, d_model: int, scan: bool):
    from trainers.spec import ModelConfig

    base = ModelConfig(name=f"compile-{family}-{layers}", vocab_size=512, d_model=d_model, d_ff=2 * d_model,
                       num_heads=4, d_kv=d_model // 4, scan_layers=scan, **BASES[family])
    # Every stack the family has (a non-zero depth) gets `layers` layers.
    depths = {k: layers for k in ("num_encoder_layers", "num_decoder_layers") if getattr(base, k)}
    return dataclasses.replace(base, **depths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--families", nargs="+", default=list(BASES), choices=list(BASES))
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--input-length", type=int, default=64)
    ap.add_argument("--target-length", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args(argv)

    import jax

    from trainers.aot import compile_cell
    from trainers.spec import CellSpec, DataConfig, OptimConfig

    jax.config.update("jax_enable_compilation_cache", False)  # every compile is a cold one
    data = DataConfig(input_length=args.input_length, target_length=args.target_length)
    optim = OptimConfig(batch_size=args.batch, steps=1)
    out: dict = {"config": {"d_model": args.d_model, "input_length": args.input_length,
                            "target_length": args.target_length, "batch": args.batch,
                            "backend": jax.default_backend(), "optimizer": optim.optimizer}}
    for family in args.families:
        times: dict = {"scanned": {}, "unrolled": {}}
        for layers in args.layers:
            for scan, name in ((True, "scanned"), (False, "unrolled")):
                cell = CellSpec(model=model_config(family, layers, args.d_model, scan), data=data, optim=optim)
                times[name][layers] = round(compile_cell(cell)["compile_s"], 2)
                print(f"{family} {name} {layers} layers: {times[name][layers]} s", file=sys.stderr, flush=True)
        out[family] = times
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
