"""Evaluation throughput on CPU: rank classification with the prompt encoded once per
question vs once per option, and greedy decoding, on one model in one run.

MMLU-shaped questions (a subject header, a question, four lettered choices, "Answer:"; a few
hundred bytes with the byte tokenizer) are scored over their four options, the letters A-D
as rank classification scores MMLU (`--options texts`: the choice texts instead). Each
contender first runs the whole question set once (compilation, excluded), then `--repeats`
timed passes; questions/s is the median. The two rank-classification paths must agree:
the largest log-probability difference between them is part of the output.

    python bench/eval_throughput.py [--preset tiny-3] [--family t5|decoder] [--questions 64]

`--family decoder` runs a decoder-only model of the preset's width with as many layers as
the preset's encoder and decoder together. `--mesh DATA,FSDP,TENSOR` also decodes on that
mesh of simulated CPU devices (parameters and KV cache sharded, trainers/eval/placement.py)
and reports its generated tokens/s beside one device's and whether the tokens are the same.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

SUBJECTS = ("abstract algebra", "anatomy", "astronomy", "college biology", "econometrics",
            "high school chemistry", "international law", "machine learning", "philosophy", "virology")
WORDS = ("the", "a", "which", "process", "energy", "value", "system", "following", "most", "likely",
         "function", "cell", "law", "is", "of", "in", "when", "an", "equal", "result", "theory", "rate")


def model_config(preset: str, family: str | None = None):
    """The preset's architecture in float32 without dropout; another `family` (a decoder-only
    one, e.g. "decoder") gets a model of the same width and total depth."""
    from orchestrator.catalog import get_preset
    from trainers.families import get_family

    cfg = dataclasses.replace(get_preset(preset).model, dtype="float32", dropout_rate=0.0)
    if family is not None and family != cfg.family:
        depth = sum(get_family(cfg.family).stacks(cfg).values())
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{family}", family=family, num_encoder_layers=0,
                                  num_decoder_layers=depth)
    return cfg


def questions(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """n MMLU-shaped (prompt, choice texts) pairs, 300-450 bytes each."""
    rng = random.Random(seed)

    def phrase(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    out = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        choices = [phrase(rng.randint(2, 6)).capitalize() for _ in range(4)]
        prompt = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                  f"{phrase(rng.randint(25, 45)).capitalize()}?\n"
                  + "".join(f"({letter}) {c}\n" for letter, c in zip("ABCD", choices)) + "Answer:")
        out.append((prompt, choices))
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one untimed call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-3", help="catalog model (its architecture, random weights)")
    ap.add_argument("--family", default=None, help="a registered model family; default: the preset's")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="questions per compiled call")
    ap.add_argument("--new-tokens", type=int, default=16, help="greedy decoding length")
    ap.add_argument("--options", default="letters", choices=("letters", "texts"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                    help="also decode on this mesh of simulated CPU devices")
    args = ap.parse_args(argv)
    mesh_cfg = None
    if args.mesh:
        from trainers.spec import UserError, mesh_from_sizes

        try:
            mesh_cfg = mesh_from_sizes(args.mesh, "--mesh")
        except UserError as e:
            ap.error(str(e))
        # The device count is fixed when JAX starts, so it is set before the import below.
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                   f"--xla_force_host_platform_device_count={mesh_cfg.devices}")

    import jax
    import numpy as np

    from trainers.data.tokenizer import ByteTokenizer
    from trainers.eval.decoding import TextGenerator
    from trainers.eval.rank import OptionScorer
    from trainers.models import init_params, param_count

    cfg = model_config(args.preset, args.family)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tok = ByteTokenizer()
    qs = questions(args.questions)
    prompts = [p for p, _ in qs]
    options = [list("ABCD") if args.options == "letters" else c for _, c in qs]
    shared = OptionScorer(cfg, params, tok, batch_size=args.batch, shared=True)
    per_option = OptionScorer(cfg, params, tok, batch_size=args.batch, shared=False)
    generate = TextGenerator(cfg, params, tok, max_new_tokens=args.new_tokens, batch_size=args.batch)

    s_shared, r_shared = timed(lambda: shared(prompts, options), args.repeats)
    s_per, r_per = timed(lambda: per_option(prompts, options), args.repeats)
    s_gen, r_gen = timed(lambda: generate.ids(prompts), args.repeats)
    a = np.array([[s.logprob for s in q] for q in r_shared])
    b = np.array([[s.logprob for s in q] for q in r_per])
    n = len(qs)
    out = {
        "config": {"model": cfg.name, "family": cfg.family, "params": param_count(params), "d_model": cfg.d_model,
                   "layers": f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers}", "vocab": cfg.vocab_size,
                   "dtype": cfg.dtype, "backend": jax.default_backend(), "questions": n, "options_per_question": 4,
                   "options": args.options, "batch": args.batch, "repeats": args.repeats,
                   "prompt_bytes_mean": statistics.mean(len(p.encode()) for p in prompts),
                   "option_bytes_mean": statistics.mean(len(o.encode()) for q in options for o in q)},
        "rc_shared_prompt": {"questions_per_s": n / s_shared, "s_per_pass": s_shared},
        "rc_prompt_per_option": {"questions_per_s": n / s_per, "s_per_pass": s_per},
        "greedy_decoding": {"questions_per_s": n / s_gen, "tokens_per_s": generated(r_gen) / s_gen,
                            "s_per_pass": s_gen, "new_tokens": args.new_tokens},
        "rc_shared_speedup": s_per / s_shared,
        "rc_max_abs_logprob_diff": float(np.abs(a - b).max()),
        "rc_same_choice": float(np.mean(a.argmax(1) == b.argmax(1))),
    }
    if mesh_cfg is not None:
        from trainers import partitioning
        from trainers.eval.placement import EvalMesh

        d, f, t = mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor
        placement = EvalMesh(partitioning.make_mesh(mesh_cfg))
        sharded = TextGenerator(cfg, params, tok, max_new_tokens=args.new_tokens, batch_size=args.batch,
                                placement=placement)
        s_sh, r_sh = timed(lambda: sharded.ids(prompts), args.repeats)
        out["sharded_greedy_decoding"] = {
            "mesh": {"data": d, "fsdp": f, "tensor": t}, "rows_per_batch": placement.rows(args.batch),
            "questions_per_s": n / s_sh, "tokens_per_s": generated(r_sh) / s_sh, "s_per_pass": s_sh,
            "speed_vs_one_device": s_gen / s_sh,
            "same_tokens_as_one_device": all(np.array_equal(x, y) for x, y in zip(r_sh, r_gen)),
        }
    print(json.dumps(out, indent=2))
    return 0


def generated(rows) -> int:
    """Tokens a decoding pass produced: each row's up to and including its EOS."""
    from trainers.eval.decoding import EOS_ID

    return sum(int(list(r).index(EOS_ID)) + 1 if EOS_ID in r else len(r) for prompt in rows for r in prompt)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
