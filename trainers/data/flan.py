"""Flan 2022 collection exports as a task source.

The public exports are JSON lines with `inputs`, `targets`, `task_source`, `task_name` and
`template_type`, in plain or gzipped files, typically one big file per sub-mixture with its
tasks interleaved. Mixing needs random access per task, so the first use streams every
file once (never holding the data in memory) and splits it into one shard per task under
FLANSCALE_HOME/flan_cache/<hash of the files>/, with the byte offset and format of every
line. Later cells with the same files reuse the shards; an example is then one seek and one
readline.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import zlib
from array import array
from collections import OrderedDict
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from trainers.data.registry import SUBMIXTURES, Task, TaskRegistry
from trainers.data.templates import FORMATS, STANDARD_FORMATS
from trainers.jsonl import read_objects
from trainers.spec import UserError, did_you_mean

INDEX_VERSION = 1
FIELDS = ("inputs", "targets", "task_source", "task_name", "template_type")
# task_source values of the collection -> the paper's sub-mixtures. Dialog tasks were added
# to the Muffin mixture in Flan 2022 ("Muffin = Flan 2021 + new"), so they map there.
SOURCE_TO_SUBMIXTURE = {"flan2021": "muffin", "flan": "muffin", "muffin": "muffin", "dialog": "muffin",
                        "t0": "t0sf", "t0sf": "t0sf", "niv2": "niv2", "cot": "cot"}
_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_FLUSH_LINES = 20_000
_OPEN_SHARDS = 64


def submixture_of(task_source: str, where: str) -> str:
    sub = SOURCE_TO_SUBMIXTURE.get(task_source.lower())
    if sub is None:
        raise UserError(f"{where}: task_source {task_source!r} unknown; allowed: Flan2021, T0, NIv2, CoT, Dialog")
    return sub


def format_of(template_type: str, submixture: str, where: str) -> str:
    """Flan template_type -> one of FORMATS. CoT datasets' zs/fs templates are the CoT formats."""
    t = template_type.lower()
    if submixture == "cot" or "cot" in t:
        return "cot_fs" if "fs" in t else "cot_zs"
    if t in STANDARD_FORMATS:
        return t
    raise UserError(f"{where}: template_type {template_type!r} unknown{did_you_mean(t, STANDARD_FORMATS)}; allowed: {', '.join(STANDARD_FORMATS)}")


def find_files(paths: tuple[str, ...]) -> list[Path]:
    if not paths:
        raise UserError("data.paths: empty; source 'flan' needs files or directories of Flan JSONL exports")
    files: list[Path] = []
    for p in map(lambda s: Path(s).expanduser(), paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"data.paths: {str(p)!r} does not exist")
    if not files:
        raise UserError(f"data.paths: no {'/'.join(_SUFFIXES)} files under {', '.join(paths)}")
    return files


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; a malformed line raises UserError."""
    for lineno, rec in read_objects(path):
        missing = [k for k in FIELDS if not isinstance(rec.get(k), str)]
        if missing:
            raise UserError(f"{path}:{lineno}: field {missing[0]!r} missing or not a string; need {', '.join(FIELDS)}")
        yield lineno, rec


def _cache_key(files: list[Path]) -> str:
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([INDEX_VERSION, stats]).encode()).hexdigest()[:16]


def build_index(files: list[Path], out: Path) -> None:
    """Stream the exports once into per-task shards + offsets/format arrays under `out`."""
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        _write_shards(files, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a bad file leaves nothing half-built behind
        raise
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished the same index first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _write_shards(files: list[Path], tmp: Path) -> None:
    (tmp / "shards").mkdir()
    tasks: dict[str, dict] = {}
    offsets: dict[str, array] = {}
    formats: dict[str, array] = {}
    sizes: dict[str, int] = {}
    pending: dict[str, list[bytes]] = {}
    n_pending = 0

    def flush() -> None:
        for name, lines in pending.items():
            with open(tmp / tasks[name]["shard"], "ab") as f:
                f.write(b"".join(lines))
        pending.clear()

    for path in files:
        for lineno, rec in read_records(path):
            where = f"{path}:{lineno}"
            name = rec["task_name"]
            sub = submixture_of(rec["task_source"], where)
            fmt = format_of(rec["template_type"], sub, where)
            if name not in tasks:
                tasks[name] = {"name": name, "task_source": rec["task_source"], "submixture": sub,
                               "shard": f"shards/{len(tasks):05d}.jsonl"}
                offsets[name], formats[name], sizes[name] = array("q"), array("b"), 0
            elif tasks[name]["submixture"] != sub:
                raise UserError(f"{where}: task {name!r} has task_source {rec['task_source']!r}, earlier {tasks[name]['task_source']!r}")
            line = (json.dumps({"inputs": rec["inputs"], "targets": rec["targets"]}, ensure_ascii=False) + "\n").encode()
            offsets[name].append(sizes[name])
            formats[name].append(FORMATS.index(fmt))
            sizes[name] += len(line)
            pending.setdefault(name, []).append(line)
            n_pending += 1
            if n_pending >= _FLUSH_LINES:
                flush()
                n_pending = 0
    flush()
    for name, meta in tasks.items():
        stem = tmp / meta["shard"][: -len(".jsonl")]
        np.save(f"{stem}.offsets.npy", np.frombuffer(offsets[name], dtype=np.int64))
        np.save(f"{stem}.formats.npy", np.frombuffer(formats[name], dtype=np.int8))
        meta["count"] = len(offsets[name])
    (tmp / "index.json").write_text(json.dumps({"version": INDEX_VERSION, "files": [str(f) for f in files],
                                                "tasks": list(tasks.values())}, indent=1))


class _Shards:
    """A bounded set of open shard files (one seek + readline per example)."""

    def __init__(self) -> None:
        self._open: OrderedDict[Path, IO[bytes]] = OrderedDict()

    def read(self, path: Path, offset: int) -> dict:
        f = self._open.pop(path, None) or open(path, "rb")
        self._open[path] = f
        if len(self._open) > _OPEN_SHARDS:
            self._open.popitem(last=False)[1].close()
        f.seek(offset)
        return json.loads(f.readline())


class FlanShardSource:
    """One task's shard. Its pool for a set of formats is a fixed shuffle of the matching
    lines (seeded by task name), so a cap keeps a random subset rather than the file's head."""

    def __init__(self, name: str, stem: Path, shards: _Shards):
        self.name, self._stem, self._shards = name, stem, shards
        self._offsets = np.load(f"{stem}.offsets.npy")
        self._formats = np.load(f"{stem}.formats.npy")
        self._pools: dict[tuple[str, ...], np.ndarray] = {}

    def present_formats(self) -> tuple[str, ...]:
        codes = set(np.unique(self._formats).tolist())
        return tuple(f for i, f in enumerate(FORMATS) if i in codes)

    def _pool(self, formats: tuple[str, ...]) -> np.ndarray:
        if formats not in self._pools:
            codes = [FORMATS.index(f) for f in formats]
            pos = np.flatnonzero(np.isin(self._formats, codes))
            np.random.default_rng(zlib.crc32(self.name.encode())).shuffle(pos)
            self._pools[formats] = pos
        return self._pools[formats]

    def size(self, formats: tuple[str, ...]) -> int:
        return len(self._pool(formats))

    def render(self, task: Task, index: int, formats: tuple[str, ...], rng: random.Random, fits) -> tuple[str, str]:
        # Exports are already rendered (few-shot exemplars included); fitting is packing's job.
        rec = self._shards.read(Path(f"{self._stem}.jsonl"), int(self._offsets[self._pool(formats)[index]]))
        return rec["inputs"], rec["targets"]


def load_registry(paths: tuple[str, ...], home: Path | str) -> TaskRegistry:
    """Registry of the tasks in the given exports, in ladder order (sub-mixture, then name)."""
    files = find_files(paths)
    root = Path(home) / "flan_cache"
    root.mkdir(parents=True, exist_ok=True)
    out = root / _cache_key(files)
    if not (out / "index.json").is_file():
        build_index(files, out)
    index = json.loads((out / "index.json").read_text())
    shards = _Shards()
    reg = TaskRegistry()
    metas = sorted(index["tasks"], key=lambda m: (SUBMIXTURES.index(m["submixture"]), m["name"]))
    for meta in metas:
        source = FlanShardSource(meta["name"], out / meta["shard"][: -len(".jsonl")], shards)
        reg.add(Task(meta["name"], meta["submixture"], source, (), source.present_formats()))
    return reg
