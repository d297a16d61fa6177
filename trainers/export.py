"""Every model directory flanscale reads, loaded one way, and the exports that leave flanscale.

Three kinds of directory hold a model:

  cell  a cell's training checkpoints, <home>/checkpoints/<key>/: orbax step folders (params,
        optimizer state, RNG, data state) and cell.json (key, spec and resolved model config,
        written when the cell starts; a SentencePiece tokenizer is copied beside it)
  base  a base model: model.json + params/ (models.save_pretrained; `flanscale pretrain`,
        `convert` and `export --format flanscale` write it)
  hf    a Hugging Face T5 v1.1 directory: config.json + model.safetensors

`load` reads any of them (of a cell, only the params of its newest intact step) together
with the tokenizer the model was trained with. `export` writes a model as a Hugging Face T5
checkpoint (`hf`) or in flanscale's own layout (`flanscale`). `python -m trainers.export SRC
OUT` runs an export in a process of its own, which is how the control plane, which never
imports JAX, exports a finished cell for the model registry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from trainers.architecture import BASE_CONFIG, trained_model
from trainers.spec import CellSpec, DataConfig, ModelConfig, UserError, from_dict, to_dict

CELL_RECORD = "cell.json"
TOKENIZER_FILE = "tokenizer.model"  # a SentencePiece tokenizer kept beside a cell's checkpoints
FORMATS = ("hf", "flanscale")
KINDS = ("cell", "base", "hf")
_SIDECARS = ("cell.json", "spec.json", "data_config.json", "pretrain.json")


@dataclasses.dataclass(frozen=True)
class Loaded:
    kind: str  # one of KINDS
    path: Path
    model: ModelConfig
    params: Any
    data: DataConfig  # names the tokenizer (and, for a cell, what it trained on)
    step: int | None = None  # a cell checkpoint's step
    record: dict | None = None  # a cell's record: {"key", "spec", "model"}


# ---------------------------------------------------------------- what a directory holds


def kind_of(path: str | os.PathLike) -> str:
    """"cell", "base" or "hf"; one line naming the path when it is none of them."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: does not exist")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (expected a model checkpoint directory)")
    if (path / BASE_CONFIG).is_file():
        return "base"
    if (path / "config.json").is_file():
        return "hf"
    if (path / CELL_RECORD).is_file() or any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
        return "cell"
    raise UserError(f"{path}: not a model checkpoint; expected a cell's checkpoint directory (numbered step "
                    "folders), a base model (model.json + params/) or a Hugging Face T5 directory "
                    "(config.json + model.safetensors)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def write_cell_record(directory: str | os.PathLike, cell: CellSpec, model: ModelConfig, tokenizer: Any) -> None:
    """cell.json beside a cell's checkpoints, so that the directory alone is enough to
    evaluate or export the model: the spec, the model config as built (an init checkpoint's
    architecture with the spec's numerics) and a copy of a SentencePiece tokenizer, which
    otherwise lives only in the home's tokenizer cache."""
    directory = Path(directory)
    record: dict[str, Any] = {"key": cell.key(), "spec": cell.to_dict(), "model": to_dict(model)}
    source = Path(str(getattr(tokenizer, "name", "")))
    if getattr(tokenizer, "name", "byte") != "byte" and source.is_file():
        shutil.copyfile(source, directory / TOKENIZER_FILE)
        record["tokenizer_file"] = TOKENIZER_FILE
    tmp = directory / f".{CELL_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(directory / CELL_RECORD)


def read_cell_record(path: str | os.PathLike) -> dict | None:
    file = Path(path) / CELL_RECORD
    if not file.is_file():
        return None
    record = _read_json(file)
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        raise UserError(f"{file}: expected an object with the cell's 'spec'")
    return record


def cell_model_config(record: dict) -> ModelConfig:
    """The model a cell trained: the record's resolved config, else its spec's (with the
    architecture of its init checkpoint where that is still there, as the job builds it)."""
    if isinstance(record.get("model"), dict):
        return from_dict(ModelConfig, record["model"])
    spec = CellSpec.from_dict(record["spec"])
    base = Path(spec.init_checkpoint) / BASE_CONFIG if spec.init_checkpoint else None
    if base is not None and base.is_file():
        return trained_model(spec.model, from_dict(ModelConfig, _read_json(base)))
    return spec.model


def _cell_data(path: Path, record: dict) -> DataConfig:
    data = CellSpec.from_dict(record["spec"]).data
    if record.get("tokenizer_file") and (path / record["tokenizer_file"]).is_file():
        data = dataclasses.replace(data, tokenizer=str(path / record["tokenizer_file"]))
    return data


def sidecar_data_config(path: Path) -> DataConfig:
    """The DataConfig naming a base model's tokenizer: a tokenizer file in the directory, or a
    JSON next to it that records one (a cell spec's "data", a DataConfig, pretrain.json's
    "tokenizer"); else the byte tokenizer."""
    for name in (TOKENIZER_FILE, "spiece.model"):
        if (path / name).is_file():
            return DataConfig(tokenizer=str(path / name))
    known = {f.name for f in dataclasses.fields(DataConfig)}
    for folder in (path, path.parent):
        for name in _SIDECARS:
            if not (folder / name).is_file():
                continue
            obj = _read_json(folder / name)
            spec = obj.get("spec") if isinstance(obj, dict) else None
            for candidate in ((spec or {}).get("data") if isinstance(spec, dict) else None,
                              obj.get("data") if isinstance(obj, dict) else None, obj):
                if isinstance(candidate, dict) and isinstance(candidate.get("tokenizer"), str):
                    return from_dict(DataConfig, {k: v for k, v in candidate.items() if k in known})
    return DataConfig(tokenizer="byte")


def _hf_data(path: Path) -> DataConfig:
    if (path / "spiece.model").is_file():
        return DataConfig(tokenizer=str(path / "spiece.model"))
    config = path / "tokenizer_config.json"
    if config.is_file() and _read_json(config).get("tokenizer_class") == "ByT5Tokenizer":
        return DataConfig(tokenizer="byte")
    raise UserError(f"{path}: no tokenizer flanscale can use; expected spiece.model (T5Tokenizer) or a "
                    "tokenizer_config.json naming ByT5Tokenizer")


def peek_config(path: str | os.PathLike, record: dict | None = None) -> tuple[str, ModelConfig]:
    """(kind, model config) without reading any weights: refuse what cannot work before loading."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "base":
        from trainers.models import load_config

        return kind, load_config(path)
    if kind == "hf":
        from trainers.models.hf_import import config_from_hf, read_hf_config

        try:
            return kind, config_from_hf(read_hf_config(path), name=path.absolute().name)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"{path / 'config.json'}: missing or invalid field {e}") from None
    record = read_cell_record(path) or record
    if record is None:
        raise UserError(f"{path}: no {CELL_RECORD} beside the checkpoints (written by newer versions when a "
                        "cell starts); pass --sweep NAME so that the cell's spec is read from MLflow")
    return kind, cell_model_config(record)


# ---------------------------------------------------------------- loading


def load(path: str | os.PathLike, record: dict | None = None) -> Loaded:
    """Any model directory -> Loaded (params on the first local device). `record` stands in
    for a cell checkpoint's missing cell.json (e.g. read from MLflow)."""
    import jax

    from trainers import models

    path = Path(path).absolute()
    kind, cfg = peek_config(path, record)
    if kind == "base":
        cfg, params = models.load_pretrained(path)
        return Loaded(kind, path, cfg, params, sidecar_data_config(path))
    if kind == "hf":
        from trainers.models.hf_import import from_hf

        data = _hf_data(path)
        cfg, params = from_hf(path)
        return Loaded(kind, path, cfg, jax.device_put(params, jax.local_devices()[0]), data)
    from trainers.checkpoint import Checkpointer

    record = read_cell_record(path) or record
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), models.param_shapes(cfg))
    ckpt = Checkpointer(path, create=False)
    try:
        steps = ckpt.steps()
        restored = ckpt.restore_params(target)
    finally:
        ckpt.close()
    if restored is None:
        found = ", ".join(map(str, steps)) or "none"
        raise UserError(f"{path}: no readable checkpoint step (steps found: {found}); the cell has not saved one yet "
                        "or its files are damaged")
    step, params = restored
    return Loaded(kind, path, cfg, params, _cell_data(path, record), step, record)


# ---------------------------------------------------------------- exporting


def _hf_tokenizer(dst: Path, data: DataConfig, model: ModelConfig) -> list[str]:
    """Tokenizer files transformers loads, where the tokenizer has a Hugging Face form: the
    byte tokenizer is ByT5's scheme exactly (UTF-8 byte + 3; pad 0, eos 1, unk 2); a
    SentencePiece model with T5's special ids is T5Tokenizer's spiece.model."""
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    common = {**specials, "extra_ids": 0, "model_max_length": data.input_length}
    source = tokenizer_file(data, model)
    if source is None:
        config = {"tokenizer_class": "ByT5Tokenizer", **common}
        files = []
    else:
        shutil.copyfile(source, dst / "spiece.model")
        config = {"tokenizer_class": "T5Tokenizer", **common}
        files = ["spiece.model"]
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (dst / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    return files + ["tokenizer_config.json", "special_tokens_map.json"]


def tokenizer_file(data: DataConfig, model: ModelConfig) -> Path | None:
    """The SentencePiece model file of `data`'s tokenizer (None for the byte tokenizer); a
    cached "spm" tokenizer is looked up (or rebuilt, deterministically) in the home."""
    if data.tokenizer == "byte":
        return None
    if data.tokenizer != "spm":
        path = Path(data.tokenizer).expanduser()
        if not path.is_file():
            raise UserError(f"data.tokenizer: SentencePiece model {str(path)!r} does not exist")
        return path
    from trainers.data.tokenizer import load_tokenizer
    from trainers.home import flanscale_home

    return Path(load_tokenizer(data, flanscale_home(), vocab_size=model.vocab_size).name)


def _provenance(loaded: Loaded) -> str:
    if loaded.record:
        return f"flanscale cell `{loaded.record.get('key', '?')}` at step {loaded.step}"
    return f"flanscale {loaded.kind} checkpoint `{loaded.path.name}`"


def export(loaded: Loaded, out: str | os.PathLike, fmt: str, force: bool = False) -> list[str]:
    """Write `loaded` to `out` in format `fmt`; returns the names of the files written."""
    from trainers.model_card import flanscale_readme, hf_readme

    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not a format; allowed: {', '.join(FORMATS)}")
    if fmt == "hf":
        from trainers.models.hf_export import check_exportable

        check_exportable(loaded.model)
    out = prepare_out(out, force)
    if fmt == "hf":
        from trainers.models.hf_export import save_hf

        files = save_hf(out, loaded.model, loaded.params) + _hf_tokenizer(out, loaded.data, loaded.model)
        (out / "README.md").write_text(hf_readme(loaded.model, _provenance(loaded), files))
        return files + ["README.md"]
    from trainers import models

    models.save_pretrained(out, loaded.model, loaded.params)
    files = [BASE_CONFIG, "params/"]
    data = loaded.data
    source = tokenizer_file(data, loaded.model)
    if source is not None:
        shutil.copyfile(source, out / TOKENIZER_FILE)
        files.append(TOKENIZER_FILE)
        data = dataclasses.replace(data, tokenizer=TOKENIZER_FILE)
    # The data section names the tokenizer for `eval --checkpoint`; the rest is provenance.
    (out / "data_config.json").write_text(json.dumps(to_dict(data), indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(flanscale_readme(loaded.model, loaded.params, _provenance(loaded)))
    return files + ["data_config.json", "README.md"]


def prepare_out(out: str | os.PathLike, force: bool) -> Path:
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UserError(f"--out: {out} already exists and is not empty; pass --force to replace it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m trainers.export SRC OUT [--format F] [--cell-record FILE]`: one export in a
    process of its own (JAX stays out of the caller); prints the files written as JSON."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m trainers.export")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--format", choices=FORMATS + ("auto",), default="auto")
    p.add_argument("--cell-record", help="JSON file standing in for the checkpoint's missing cell.json")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    try:
        record = _read_json(Path(args.cell_record)) if args.cell_record else None
        _, cfg = peek_config(args.src, record)
        fmt = default_format(cfg) if args.format == "auto" else args.format
        loaded = load(args.src, record)
        files = export(loaded, args.out, fmt, force=args.force)
    except UserError as e:
        print(f"flanscale: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"format": fmt, "files": files, "step": loaded.step}))
    return 0


def default_format(cfg: ModelConfig) -> str:
    """hf where a Hugging Face class matches the model exactly (T5 v1.1), else flanscale's own."""
    from trainers.models.hf_export import check_exportable

    try:
        check_exportable(cfg)
    except UserError:
        return "flanscale"
    return "hf"


if __name__ == "__main__":
    sys.exit(main())
