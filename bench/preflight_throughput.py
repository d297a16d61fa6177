"""Preflight benchmark: what checking every record of a sweep's Flan exports costs before a
sweep starts, and what a rerun on unchanged files costs with the validation cache.

Generates Flan-shaped exports of --size bytes in all (one file per sub-mixture, as the
public exports are laid out; records with the collection's fields, a few hundred tasks,
long-tailed input lengths) in a new folder, runs the check that `flanscale sweep run` runs
(trainers.data.check.flan_exports with its ValidationCache) twice, and also times a full
SHA-256 of the files for comparison with the cache's cheap digest. Prints JSON; the folder
is deleted afterwards unless --keep.

    python bench/preflight_throughput.py [--size 1G] [--work /tmp/preflight-bench] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from trainers.data.check import ValidationCache, flan_exports

SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}
# (file, task_source, template types, tasks): the collection's sub-mixtures, few CoT tasks.
LAYOUT = (("cot.jsonl", "CoT", ("cot_zs", "cot_fs"), 9), ("flan2021.jsonl", "Flan2021", None, 80),
          ("t0.jsonl", "T0", None, 190), ("niv2.jsonl", "NIv2", None, 300))
STANDARD = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
POOL = 4096  # distinct lines per file, written round and round


def size_arg(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    scale = SUFFIXES.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if t[-1:] in SUFFIXES else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give bytes, e.g. 1G, 200M or 64K") from None
    if n < 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is too small; give at least 1K")
    return n


def generate(folder: Path, size: int, seed: int = 0) -> int:
    """Exports of about `size` bytes in all under `folder`; returns the bytes written."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    written = 0
    for name, source, templates, tasks in LAYOUT:
        share = size // len(LAYOUT)
        lines = []
        pool = min(POOL, max(16, share // 300))  # a tiny --size needs few distinct lines
        for i in range(pool):
            n = max(4, int(rng.lognormvariate(4.5, 0.9)))  # ~90 words median, long-tailed
            rec = {"inputs": " ".join(rng.choices(words, k=n)), "targets": " ".join(rng.choices(words, k=8)),
                   "task_source": source, "task_name": f"{source.lower()}_task_{i % tasks}",
                   "template_type": rng.choice(templates or STANDARD)}
            lines.append((json.dumps(rec) + "\n").encode())
        done = 0
        with open(folder / name, "wb") as f:
            i = 0
            while done < share:
                f.write(lines[i % pool])
                done += len(lines[i % pool])
                i += 1
        written += done
    return written


def digest_s(files: list[Path]) -> float:
    """Seconds to SHA-256 every byte of `files` (what a full digest would cost per run)."""
    start = time.perf_counter()
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="preflight_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=size_arg, default=2**30, help="bytes of exports to generate (default 1G)")
    p.add_argument("--work", type=Path, default=None, help="a new folder for the exports and the cache "
                   "(default: a new folder under the system's temp folder)")
    p.add_argument("--keep", action="store_true", help="leave the generated exports in place")
    args = p.parse_args(argv)
    if args.work is not None and args.work.exists():
        p.error(f"--work {args.work}: already exists; give a new folder (the generated exports go there)")
    work = args.work or Path(tempfile.mkdtemp(prefix="flanscale-preflight-bench-"))
    try:
        (work / "flan").mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        size = generate(work / "flan", args.size)
        generate_s = time.perf_counter() - start
        runs = []
        for label in ("first", "cached"):
            cache = ValidationCache(work / "home" / "preflight")
            start = time.perf_counter()
            found = flan_exports((str(work / "flan"),), "data.paths", cache)
            cache.commit()
            secs = time.perf_counter() - start
            runs.append({"run": label, "seconds": round(secs, 3), "records": found.records,
                         "records_per_s": round(found.records / secs), "mb_per_s": round(size / 2**20 / secs, 1)})
        files = sorted((work / "flan").iterdir())
        out = {"bytes": size, "files": len(files), "tasks": len(found.tasks), "generate_s": round(generate_s, 1),
               "runs": runs, "full_sha256_s": round(digest_s(files), 3),
               "cache_digest": "size + mtime + SHA-256 of the first and last MiB"}
        print(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
