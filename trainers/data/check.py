"""Cheap, JAX-free checks of a cell's input files, run where the sweep is planned.

A cell reads its Flan exports, base checkpoint and benchmark data only after Ray placed it;
a missing file or a file in the wrong format would then fail every cell that reads it, after
the sweep's runs were created. These checks read each input the way the cell will (every record
of each export, streamed; the base checkpoint's model.json, whose architecture must be one
a family builds; a SentencePiece model; the benchmark files through their own loaders) and
raise UserError naming the field, the file and what is expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainers.data.flan import FIELDS, SOURCE_TO_SUBMIXTURE, find_files, format_of, read_records, submixture_of
from trainers.data.templates import STANDARD_FORMATS
from trainers.architecture import BASE_CONFIG, BASE_PARAMS, read_base_config
from trainers.spec import ModelConfig, UserError

# Bumped when what a record is checked for changes, so older cache entries stop matching.
CHECK_VERSION = 1
_RULES = [FIELDS, sorted(SOURCE_TO_SUBMIXTURE.items()), list(STANDARD_FORMATS)]
DIGEST_BLOCK = 1 << 20


@dataclass(frozen=True)
class ExportSummary:
    """What a full check of a sweep's Flan exports found: files, records and each task's
    sub-mixture (in the order first seen)."""

    files: int
    records: int
    tasks: dict[str, str]

    def counts(self) -> dict[str, int]:
        """Tasks per sub-mixture."""
        out: dict[str, int] = {}
        for sub in self.tasks.values():
            out[sub] = out.get(sub, 0) + 1
        return out


class ValidationCache:
    """Exports already checked, one small JSON file per export under `root`, named by the
    export's identity: its size, its modification time and a SHA-256 of its first and last
    DIGEST_BLOCK bytes. Not a digest of the whole file, which would read every byte on every
    run (seconds per GB, where this reads 2 MiB), and would still not protect the cells: the
    shard index they build from the exports (trainers/data/flan.py) knows a file by its size
    and modification time alone. The rules a record is checked by are part of the name.
    Entries are written only by `commit`, once every check of a command passed, and a home
    that cannot be written to only means nothing is remembered."""

    def __init__(self, root: Path | None):
        self.root = root
        self._pending: dict[Path, dict] = {}

    def key(self, path: Path) -> str:
        try:
            st = path.stat()
            h = hashlib.sha256(json.dumps([CHECK_VERSION, _RULES, st.st_size, st.st_mtime_ns]).encode())
            with open(path, "rb") as f:
                h.update(f.read(DIGEST_BLOCK))
                if st.st_size > DIGEST_BLOCK:
                    f.seek(max(DIGEST_BLOCK, st.st_size - DIGEST_BLOCK))
                    h.update(f.read(DIGEST_BLOCK))
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
        return h.hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        try:
            entry = json.loads((self.root / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(entry, dict) and isinstance(entry.get("tasks"), dict) and isinstance(entry.get("records"), int)
        return entry if ok else None

    def put(self, key: str, entry: dict) -> None:
        if self.root is not None:
            self._pending[self.root / f"{key}.json"] = entry

    def commit(self) -> None:
        """Write the entries `put` since the last commit (atomically, each)."""
        pending, self._pending = self._pending, {}
        for path, entry in pending.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    json.dump(entry, f)
                os.replace(tmp, path)
            except OSError:
                return


def flan_exports(paths: tuple[str, ...], where: str = "data.paths", cache: ValidationCache | None = None
                 ) -> ExportSummary:
    """Every record of every export file under `paths`, streamed: each line a JSON object
    with the Flan fields as strings, a known task_source and template_type, and each task
    in one sub-mixture. The first bad record raises UserError with its file, line and field.
    Files `cache` knows unchanged are not read again."""
    tasks: dict[str, tuple[str, str, str]] = {}  # name -> (sub-mixture, task_source, where first seen)
    records = 0
    try:
        files = find_files(paths)
        for path in files:
            key = cache.key(path) if cache is not None else ""
            entry = cache.get(key) if cache is not None else None
            if entry is None:
                entry = _check_export(path)
                if cache is not None:
                    cache.put(key, entry)
            records += entry["records"]
            for name, (source, sub, line) in entry["tasks"].items():
                first = tasks.setdefault(name, (sub, source, f"{path}:{line}"))
                if first[0] != sub:
                    raise UserError(f"{path}:{line}: task {name!r} has task_source {source!r}, "
                                    f"but {first[2]} has {first[1]!r}; a task belongs to one sub-mixture")
    except UserError as e:  # the readers name the field themselves when they name one
        raise UserError(f"{where}: {str(e).removeprefix('data.paths: ')}") from None
    return ExportSummary(len(files), records, {name: t[0] for name, t in tasks.items()})


def _check_export(path: Path) -> dict:
    """{records, tasks: {name: [task_source, sub-mixture, first line]}} of one export."""
    tasks: dict[str, list] = {}
    known: dict[tuple[str, str], str] = {}  # (task_source, template_type) -> sub-mixture, once checked
    records = 0
    for lineno, rec in read_records(path):
        source, template = rec["task_source"], rec["template_type"]
        sub = known.get((source, template))
        if sub is None:
            at = f"{path}:{lineno}"
            sub = submixture_of(source, at)
            format_of(template, sub, at)
            known[(source, template)] = sub
        records += 1
        name = rec["task_name"]
        first = tasks.get(name)
        if first is None:
            tasks[name] = [source, sub, lineno]
        elif first[1] != sub:
            raise UserError(f"{path}:{lineno}: task {name!r} has task_source {source!r}, but line {first[2]} "
                            f"has {first[0]!r}; a task belongs to one sub-mixture")
    if not records:
        raise UserError(f"{path}: no records; a Flan export has one JSON object per line")
    return {"records": records, "tasks": tasks}


def base_checkpoint(path: str, where: str = "init_checkpoint") -> ModelConfig:
    """`path` is a base checkpoint as `flanscale pretrain` / `flanscale convert` write it:
    a folder with a readable model.json (a ModelConfig of an architecture a family builds)
    and a params/ folder; returns that config."""
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"{where}: {path!r} {what}; give a base checkpoint folder ({BASE_CONFIG} + {BASE_PARAMS}/), "
                        "as `flanscale pretrain --out` or `flanscale convert` write")
    cfg = read_base_config(path, where)  # an architecture a family builds, as recorded
    params = root / BASE_PARAMS
    if not params.is_dir() or not any(params.iterdir()):
        raise UserError(f"{where}: {path!r} has no {BASE_PARAMS}/ folder with the weights; "
                        "not a complete base checkpoint")
    return cfg


def eval_data(benchmark_names: tuple[str, ...], data_dir: str, mmlu_split: str, where: str = "eval.data_dir") -> None:
    """Each benchmark that reads `data_dir` loads from it with the loader the cell uses."""
    from trainers.eval import benchmarks, loaders

    for name in benchmark_names:
        try:
            bench = loaders.load(name, data_dir, mmlu_split)
        except UserError as e:
            raise UserError(f"{where}: {name}: {e}") from None
        if not any(bench.tasks.values()):
            raise UserError(f"{where}: {name}: no examples under {benchmarks.benchmark_root(name, data_dir)}")


def tokenizer_model(path: str, where: str = "data.tokenizer") -> int:
    """A SentencePiece .model file loads with T5's special ids; returns its vocabulary size."""
    from trainers.data.tokenizer import load_spm

    try:
        return load_spm(path).vocab_size
    except UserError as e:
        raise UserError(f"{where}: {str(e).removeprefix('data.tokenizer: ')}") from None


def tokenizer_ids(tokenizer: str, where: str = "data.tokenizer") -> int | None:
    """How many ids the tokenizer a cell loads gives: the byte tokenizer's, a .model file's
    (loaded), None for "spm", which is trained to each model's own vocabulary."""
    if tokenizer.endswith(".model"):
        return tokenizer_model(tokenizer, where)
    if tokenizer == "byte":
        from trainers.data.tokenizer import ByteTokenizer

        return ByteTokenizer.vocab_size
    return None
