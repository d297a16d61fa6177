"""`flanscale convert hf-t5 SRC DST`: turn a local Hugging Face T5 v1.1 / Flan-T5 checkpoint
into a flanscale base-model checkpoint (DST/params in orbax format + DST/model.json) that a
cell uses as `init_checkpoint`. Reads config.json and safetensors only; no network, no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainers.spec import UserError

PARAM_DTYPES = ("float32", "bfloat16")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert external checkpoints into flanscale base-model checkpoints",
        description="Convert an external checkpoint into a flanscale base-model checkpoint "
        "(DST/params + DST/model.json), usable as a cell's init_checkpoint.",
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    hf = kinds.add_parser(
        "hf-t5",
        help="Hugging Face T5 v1.1 / Flan-T5 directory (config.json + model.safetensors)",
        description="Import a local Hugging Face T5 v1.1 / Flan-T5 directory (config.json and "
        "model.safetensors or a sharded model.safetensors.index.json).",
    )
    hf.add_argument("src", metavar="SRC", help="Hugging Face checkpoint directory")
    hf.add_argument("dst", metavar="DST", help="output directory (must not exist unless --force)")
    hf.add_argument("--param-dtype", choices=PARAM_DTYPES, default="float32",
                    help="dtype to store the parameters in (default float32)")
    hf.add_argument("--force", action="store_true", help="replace DST if it already holds a checkpoint")
    hf.set_defaults(func=handle_hf_t5)


def handle_hf_t5(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise UserError(f"{dst}: already exists and is not empty; pass --force to replace it")
    # Heavy imports only here, so `flanscale --help` stays fast and jax-free.
    from trainers import models
    from trainers.models import t5

    cfg, params = t5.from_hf(src, param_dtype=args.param_dtype)
    models.save_pretrained(dst, cfg, params)
    n = models.param_count(params)
    print(
        f"converted {src} -> {dst}: T5 v1.1 d_model={cfg.d_model} layers={cfg.num_encoder_layers}/"
        f"{cfg.num_decoder_layers} heads={cfg.num_heads} vocab={cfg.vocab_size} params={n:,} ({args.param_dtype})"
    )
    return 0
