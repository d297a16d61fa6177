"""`flanscale export CELL_OR_CHECKPOINT --out DIR [--format hf|flanscale] [--sweep NAME]`: write a
model so that it leaves flanscale: a T5 cell as a Hugging Face T5 checkpoint (config.json,
model.safetensors, tokenizer files), any model in flanscale's own layout (model.json,
params/, README.md describing every parameter).

CELL_OR_CHECKPOINT is a directory (a cell's checkpoints, a base model, a Hugging Face T5
directory) or a cell key (or a unique prefix of one), found under the home's checkpoints or,
with --sweep, among the sweep's cells in MLflow. `resolve_model_dir` is shared with
`flanscale eval --checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from trainers.home import flanscale_home
from trainers.home import tracking_uri as home_tracking_uri
from trainers.spec import UserError, did_you_mean

FORMATS = ("hf", "flanscale")
MIN_PREFIX = 4  # shorter key prefixes match too much to be what a user meant


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write a cell's model as a Hugging Face T5 checkpoint or in flanscale's own layout",
        description="Export a model: a T5 cell as a Hugging Face T5ForConditionalGeneration checkpoint "
                    "(config.json, model.safetensors, tokenizer files) or any model in flanscale's layout "
                    "(model.json + params/ + a README of the parameters). Decoder-only (PaLM-style) models have "
                    "no exact Hugging Face class and export as flanscale only.")
    p.add_argument("source", metavar="CELL_OR_CHECKPOINT",
                   help="a cell key (or unique prefix), a cell's checkpoint directory, a base-model directory "
                        "or a Hugging Face T5 directory")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty unless --force)")
    p.add_argument("--format", choices=FORMATS, help="hf or flanscale (default: hf for T5, flanscale for decoders)")
    add_source_args(p)
    p.add_argument("--force", action="store_true", help="replace --out if it holds files")
    p.set_defaults(func=run, reads_store=True)


def add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", help="the sweep a cell key belongs to (looked up in MLflow)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under FLANSCALE_HOME)")


def run(args: argparse.Namespace) -> int:
    from trainers import export

    from orchestrator.preflight import check_out_dir

    directory, record = resolve_model_dir(args.source, args.sweep, args.tracking_uri, "CELL_OR_CHECKPOINT")
    check_out_dir(args.out, "--out")  # before any weights are read
    kind, cfg = export.peek_config(directory, record)
    fmt = args.format or export.default_format(cfg)
    if fmt == "hf":
        from trainers.models.hf_export import check_exportable

        check_exportable(cfg)  # before reading any weights
    loaded = export.load(directory, record)
    files = export.export(loaded, args.out, fmt, force=args.force)
    what = f"cell {loaded.record.get('key', directory.name)} at step {loaded.step}" if kind == "cell" else str(directory)
    form = "Hugging Face T5" if fmt == "hf" else "flanscale"
    print(f"exported {what} ({cfg.name}) to {Path(args.out)} as {form}: {', '.join(files)}")
    return 0


# ---------------------------------------------------------------- CELL_OR_CHECKPOINT -> directory


def resolve_model_dir(source: str, sweep: str | None, tracking_uri: str | None,
                      flag: str) -> tuple[Path, dict | None]:
    """(model directory, stand-in cell record) of a path or a cell key. The record is read from
    MLflow only for a cell checkpoint without its own cell.json."""
    from trainers.export import CELL_RECORD

    path = Path(source).expanduser()
    # Keys are hex digits: anything with a slash, or a name that exists here, is a path.
    if "/" in source or source.startswith(".") or (sweep is None and path.exists()):
        if not path.exists():
            raise UserError(f"{flag}: {source!r} does not exist")
        if _holds_steps_only(path):
            return path, _record_from_any_sweep(path.name, tracking_uri)
        return path, None
    if sweep is not None:
        return _from_sweep(source, sweep, tracking_uri, flag)
    checkpoints = flanscale_home() / "checkpoints"
    known = sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.is_dir() else []
    key = _match_key(source, known, flag, f"the key of a cell with checkpoints under {checkpoints}",
                     "; or pass --sweep NAME to look the cell up in MLflow")
    directory = checkpoints / key
    if (directory / CELL_RECORD).is_file():
        return directory, None
    return directory, _record_from_any_sweep(key, tracking_uri)


def _holds_steps_only(path: Path) -> bool:
    """A cell's checkpoint directory without its cell.json (written before cells kept one)."""
    from trainers.export import CELL_RECORD

    if not path.is_dir() or any((path / f).is_file() for f in ("model.json", "config.json", CELL_RECORD)):
        return False
    return any(p.is_dir() and p.name.isdigit() for p in path.iterdir())


def _match_key(source: str, known: list[str], flag: str, what: str, hint: str = "") -> str:
    matches = [k for k in known if k == source] or (
        [k for k in known if k.startswith(source)] if len(source) >= MIN_PREFIX else [])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"{flag}: {source!r} matches {len(matches)} cell keys ({', '.join(matches[:4])}); "
                        "give more of the key")
    raise UserError(f"{flag}: {source!r} is neither a directory nor {what}{did_you_mean(source, known)}{hint}")


def _from_sweep(source: str, sweep: str, tracking_uri: str | None, flag: str) -> tuple[Path, dict | None]:
    from orchestrator.store import SweepStore

    store = SweepStore(tracking_uri, read_only=True)
    if store.sweep_run(sweep, create=False) is None:
        raise UserError(f"--sweep: no sweep {sweep!r} in {store.tracking_uri}")
    records = {r.key: r for r in store.list_cells(sweep)}
    key = _match_key(source, sorted(records), flag, f"a cell of sweep {sweep!r}",
                     f" (its cells: {', '.join(sorted(records)[:6])}{' ...' if len(records) > 6 else ''})")
    rec = records[key]
    directory = store.home / "checkpoints" / key
    if not directory.is_dir():
        why = ("it trains nothing (task count 0): evaluate its base model directly"
               if rec.params.get("task_count") == "0" else f"its state is {rec.state}")
        raise UserError(f"{flag}: cell {key} of sweep {sweep!r} has no checkpoint under {directory.parent}; {why}")
    if (directory / "cell.json").is_file():
        return directory, None
    return directory, _record_of_run(store.client, rec.run_id)


def _record_of_run(client: Any, run_id: str) -> dict | None:
    """The cell.json artifact the controller logs on every cell's run: {"spec": ..., "key": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, "cell.json", tmp)
        except Exception:  # MLflow raises several types for a missing artifact
            return None
        record = json.loads(Path(local).read_text())
    return record if isinstance(record, dict) and isinstance(record.get("spec"), dict) else None


def _record_from_any_sweep(key: str, tracking_uri: str | None) -> dict | None:
    """A cell's record found by its key in any experiment of the tracking store, if there is one."""
    uri = home_tracking_uri(tracking_uri, flanscale_home())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # no store here: do not create one just to look
    from orchestrator.sqlite_store import open_read_only_client
    from orchestrator.store import TAG_CELL_KEY, TAG_KIND

    client = open_read_only_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, f"tags.`{TAG_KIND}` = 'cell' and tags.`{TAG_CELL_KEY}` = '{key}'",
                              max_results=1)
    return _record_of_run(client, runs[0].info.run_id) if runs else None
