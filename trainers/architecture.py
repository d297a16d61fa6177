"""The model a cell trains: its spec's, or, finetuning from a base checkpoint, the
checkpoint's own architecture (its model.json) with the spec's name and numerics.

JAX-free, so the planner counts the parameters, FLOPs, memory and cost of the model the
job builds, by the same rule (`trained_model`), and a base checkpoint whose architecture
is not its preset's is planned, logged and reported as what it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from trainers.spec import ModelConfig, UserError, from_dict

# What trainers.models.save_pretrained writes (and load_pretrained reads) in a base checkpoint.
BASE_CONFIG = "model.json"
BASE_PARAMS = "params"
# What a cell's spec decides of a model finetuned from a base checkpoint: the name the grid
# calls it by and the numerics (compute dtype, dropout, remat, layer layout). Everything
# else, the architecture and the parameters' dtype, is the checkpoint's.
FROM_SPEC = ("name", "dtype", "dropout_rate", "remat", "remat_policy", "scan_layers")


def read_base_config(path: str | Path, where: str = "init_checkpoint") -> ModelConfig:
    """The ModelConfig in `path`/model.json; UserError naming `where` and the file when it is
    missing, not a model config, or an architecture no family builds."""
    cfg_file = Path(path).expanduser() / BASE_CONFIG
    if not cfg_file.is_file():
        raise UserError(f"{where}: {str(path)!r} has no {BASE_CONFIG}; not a flanscale base checkpoint "
                        f"({BASE_CONFIG} + {BASE_PARAMS}/)")
    try:
        cfg = from_dict(ModelConfig, json.loads(cfg_file.read_text()))
    except OSError as e:
        raise UserError(f"{where}: {cfg_file}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: {cfg_file}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except (UserError, TypeError, AttributeError) as e:
        raise UserError(f"{where}: {cfg_file}: not a model config ({e})") from None
    from trainers.families import validate

    try:  # an architecture some family builds, as recorded (the cells build this one)
        validate(cfg)
    except UserError as e:
        raise UserError(f"{where}: {cfg_file}: {e}") from None
    return cfg


def trained_model(model: ModelConfig, saved: ModelConfig) -> ModelConfig:
    """The model a cell specified as `model` trains when it starts from a base checkpoint
    whose model.json is `saved`."""
    return dataclasses.replace(saved, **{f: getattr(model, f) for f in FROM_SPEC})


def differences(model: ModelConfig, trained: ModelConfig) -> list[str]:
    """The fields in which `trained` differs from `model`, as "field trained not model"."""
    return [f"{f.name} {getattr(trained, f.name)} not {getattr(model, f.name)}"
            for f in dataclasses.fields(ModelConfig) if getattr(trained, f.name) != getattr(model, f.name)]
