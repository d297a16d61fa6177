"""Training throughput of a T5-shaped model on CPU: packed JAX vs padded PyTorch.

flanscale packs several examples per row (inputs 512 / targets 128) with per-example
attention masks; the usual PyTorch recipe (Hugging Face T5) pads each batch of examples to
its longest one. Both train on the same examples, drawn from the data pipeline's Flan-like
length distribution (the packed rows are split back into their examples for the peer), so
"useful tokens/s" (non-padding tokens per second) compares the two fairly.

    python bench/train_throughput.py [--steps N] [--peer] [--batch 8] [--input-work]
    python bench/train_throughput.py --preset t5-large --dtype bfloat16 \
        --input-length 2048 --target-length 512 --accelerator h200-141g   # MFU on a GPU

`--input-work` adds the step time with the input work and without it, side by side: batches
packed beforehand (no input work), packed by the live pipeline inside the step loop, and
packed by the live pipeline on its background thread (how a cell trains). When the last
equals the first, input is hidden.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

LI, LT = 512, 128


def model_config(preset: str | None = None, dtype: str = "float32", vocab: int = 32128):
    """The fixed benchmark shape, or a catalog preset's architecture, in `dtype`."""
    import dataclasses

    from trainers.spec import ModelConfig

    if preset:
        from orchestrator.catalog import get_preset

        cfg = get_preset(preset).model
    else:
        cfg = ModelConfig(
            name="bench-t5", family="t5", vocab_size=vocab, d_model=256, d_ff=1024, num_heads=4, d_kv=64,
            num_encoder_layers=4, num_decoder_layers=4,
        )
    return dataclasses.replace(cfg, dtype=dtype, dropout_rate=0.0)


def live_batches(batch: int, home: Path, li: int = LI, lt: int = LT):
    """The data pipeline over the built-in instruction suite, packing as it is asked."""
    from trainers.data.pipeline import make_batches
    from trainers.spec import DataConfig

    data = DataConfig(task_count=89, input_length=li, target_length=lt, tokenizer="byte", examples_per_task=50)
    return make_batches(data, "t5", batch, 0, home)


def packed_batches(batch: int, steps: int, home: Path, li: int = LI, lt: int = LT) -> list[dict]:
    """steps + 1 packed batches (one to compile) from the built-in instruction suite."""
    it = live_batches(batch, home, li, lt)
    return [next(it) for _ in range(steps + 1)]


def unpack(batches: list[dict]) -> list[tuple[list[int], list[int]]]:
    """Packed rows -> the (input ids, target ids) of every example in them, in order."""
    import numpy as np

    examples = []
    for b in batches:
        for r in range(b["encoder_input_tokens"].shape[0]):
            enc_seg, dec_seg = b["encoder_segment_ids"][r], b["decoder_segment_ids"][r]
            for s in np.unique(enc_seg[enc_seg > 0]):
                inputs = b["encoder_input_tokens"][r][enc_seg == s].tolist()
                targets = b["decoder_target_tokens"][r][dec_seg == s].tolist()
                examples.append((inputs, targets))
    return examples


def bench_jax(batches: list[dict], batch: int, cfg, li: int = LI, lt: int = LT, accelerator: str = "cpu",
              total_steps: int | None = None) -> dict:
    """Step time and throughput over `batches` (an iterator when `total_steps` is given)."""
    import jax

    from trainers.data.pipeline import packing_efficiency
    from trainers.job import make_setup
    from trainers.models import init_params
    from trainers.spec import MeshConfig, OptimConfig
    from trainers.loop import train_loop
    from trainers.train import init_state

    optim = OptimConfig(batch_size=batch, learning_rate=5e-4)
    setup = make_setup(cfg, optim, MeshConfig(accelerator=accelerator), li, lt, packing_efficiency)
    state = init_state(setup, init_params(cfg, jax.random.PRNGKey(0), input_length=li, target_length=lt), 0)
    logs: list[dict] = []
    t0 = time.perf_counter()
    train_loop(setup, state, iter(batches), total_steps=total_steps or len(batches),
               log_metrics=lambda m, s: logs.append(m))
    wall = time.perf_counter() - t0
    steps = [m for m in logs if "train/step_s" in m][1:]  # the first step's buffers are still warming
    step_s = statistics.median(m["train/step_s"] for m in steps)
    useful = statistics.median(m["train/useful_tokens_per_s"] * m["train/step_s"] for m in steps)
    return {
        "step_s": step_s,
        "tokens_per_s": batch * (li + lt) / step_s,
        "useful_tokens_per_s": useful / step_s,
        "packing_efficiency": statistics.mean(m["train/packing_efficiency"] for m in steps),
        "mfu": statistics.median(m["train/mfu"] for m in steps),
        # XLA's count misses all scanned layers but one, so the loop logs it only where it
        # counts them all (None for scanned models).
        "xla_step_flops": next((m["train/xla_step_flops"] for m in logs if "train/xla_step_flops" in m), None),
        "analytic_step_flops": setup.analytic_step_flops,
        "wall_s_incl_compile": wall,
    }


class _TimedInput:
    """An iterator that records how long each batch kept the train loop waiting."""

    def __init__(self, it) -> None:
        self.it, self.waits = it, []

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        batch = next(self.it)
        self.waits.append(time.perf_counter() - t0)
        return batch


def bench_input(batch: int, steps: int, cfg, home: Path, li: int, lt: int, accelerator: str,
                rounds: int = 3) -> dict:
    """Median step time, and how long the loop waited for a batch, without input work
    (batches packed beforehand), with the live pipeline packing inside the step loop, and
    with it packing on its background thread; and the packing time of one batch alone. All
    train on the same batches; the three run in turn, `rounds` times, so that a machine
    whose load drifts favours none of them."""
    from trainers.data.pipeline import Prefetcher

    it = live_batches(batch, home, li, lt)
    t0 = time.perf_counter()
    materialized = [next(it) for _ in range(steps + 1)]
    packing_s = (time.perf_counter() - t0) / (steps + 1)
    sources = {
        "materialized": lambda: iter(materialized),
        "live_inline": lambda: live_batches(batch, home, li, lt),
        "live_prefetched": lambda: Prefetcher(live_batches(batch, home, li, lt)),
    }
    times: dict[str, list[float]] = {name: [] for name in sources}
    waits: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, make in sources.items():
            src = _TimedInput(make())
            times[name].append(bench_jax(src, batch, cfg, li, lt, accelerator, total_steps=steps + 1)["step_s"])
            waits[name].extend(src.waits[1:])  # the first batch starts the pipeline
            if isinstance(src.it, Prefetcher):
                src.it.close()
    step_s = {name: statistics.median(t) for name, t in times.items()}
    return {
        "step_s": step_s,
        "step_s_per_round": times,
        # Mean, not median: a window of examples is packed every few batches, in one go.
        "input_wait_s_per_step": {name: statistics.mean(w) for name, w in waits.items()},
        "input_wait_s_max": {name: max(w) for name, w in waits.items()},
        "packing_s_per_batch": packing_s,
        "prefetched_over_materialized": step_s["live_prefetched"] / step_s["materialized"],
        "inline_over_materialized": step_s["live_inline"] / step_s["materialized"],
    }


def bench_torch(examples: list[tuple[list[int], list[int]]], batch: int, steps: int, cfg) -> dict:
    """HF T5 (PyTorch), same architecture, Adafactor, batches padded to their longest example."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_ff=cfg.d_ff, d_kv=cfg.d_kv, num_heads=cfg.num_heads,
            num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    )
    model.train()
    opt = Adafactor(model.parameters(), lr=5e-4, relative_step=False, scale_parameter=True, warmup_init=False)
    times, useful, padded = [], [], []
    for i in range(steps + 1):
        chunk = examples[i * batch:(i + 1) * batch]
        if len(chunk) < batch:
            break
        li = max(len(x) for x, _ in chunk)
        lt = max(len(y) for _, y in chunk)
        inp = torch.zeros((batch, li), dtype=torch.long)
        lab = torch.full((batch, lt), -100, dtype=torch.long)
        for r, (x, y) in enumerate(chunk):
            inp[r, : len(x)] = torch.tensor(x)
            lab[r, : len(y)] = torch.tensor(y)
        t0 = time.perf_counter()
        loss = model(input_ids=inp, attention_mask=(inp != 0).long(), labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if i > 0:  # the first step allocates
            times.append(dt)
            useful.append(sum(len(x) + len(y) for x, y in chunk))
            padded.append(batch * (li + lt))
    step_s = statistics.median(times)
    return {
        "step_s": step_s,
        "tokens_per_s": statistics.mean(padded) / step_s,
        "useful_tokens_per_s": statistics.mean(useful) / step_s,
        "examples_per_step": batch,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=8, help="packed rows per JAX step")
    ap.add_argument("--peer", action="store_true", help="also run HF transformers' T5 (PyTorch), padded batches")
    ap.add_argument("--preset", default=None, help="a catalog model instead of the fixed shape (e.g. t5-large)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    ap.add_argument("--input-length", type=int, default=LI)
    ap.add_argument("--target-length", type=int, default=LT)
    ap.add_argument("--accelerator", default="cpu", help="whose peak FLOP/s MFU is measured against")
    ap.add_argument("--input-work", action="store_true",
                    help="also compare step time with and without the input pipeline's work")
    args = ap.parse_args(argv)
    li, lt = args.input_length, args.target_length
    cfg = model_config(args.preset, args.dtype)
    home = Path(os.environ.get("FLANSCALE_HOME") or tempfile.mkdtemp(prefix="flanscale-bench-"))
    batches = packed_batches(args.batch, args.steps, home, li, lt)
    examples = unpack(batches)
    out = {
        "config": {"model": cfg.name, "d_model": cfg.d_model, "d_ff": cfg.d_ff, "heads": cfg.num_heads,
                   "layers": f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers}", "vocab": cfg.vocab_size,
                   "dtype": cfg.dtype, "input_length": li, "target_length": lt, "batch": args.batch,
                   "steps": args.steps, "accelerator": args.accelerator},
        "examples": len(examples),
        "mean_example_tokens": statistics.mean(len(x) + len(y) for x, y in examples),
        "flanscale_jax_packed": bench_jax(batches, args.batch, cfg, li, lt, args.accelerator),
    }
    if args.input_work:
        out["input_work"] = bench_input(args.batch, args.steps, cfg, home, li, lt, args.accelerator)
    if args.peer:
        # Same examples, in order, batch-size examples per step (the HF recipe's unit).
        peer = bench_torch(examples, args.batch, args.steps, cfg)
        out["hf_torch_padded"] = peer
        out["useful_tokens_per_s_ratio"] = out["flanscale_jax_packed"]["useful_tokens_per_s"] / peer["useful_tokens_per_s"]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
