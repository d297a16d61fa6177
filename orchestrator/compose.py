"""Hydra composition of a sweep file: the schema, then the file (with its defaults list),
then command-line overrides, into one plain mapping that orchestrator.spec types and
validates. Hydra's and OmegaConf's errors are turned into one line naming the file, the
field or override, the bad value and what is allowed.
"""

from __future__ import annotations

import re
import threading
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from trainers.spec import UserError, did_you_mean

_ENTRY_NAME = "_flanscale_sweep_entry"
_LOCK = threading.Lock()
# Config groups (eval/, data/) that any sweep file may name in its defaults list or select on
# the command line. They are package data, so an installed flanscale composes a sweep exactly
# as a source checkout does; a group folder next to the sweep file is searched first.
SHARED_GROUPS = Path(__file__).resolve().parent / "groups"


def _schema_node(schema: type):
    """The schema dataclass as a mutable structured config (Hydra merges into it)."""
    from omegaconf import DictConfig, OmegaConf

    def unfreeze(node) -> None:
        # Frozen dataclasses become read-only nodes; composition needs to write into them.
        OmegaConf.set_readonly(node, False)
        if isinstance(node, DictConfig):
            for key in node:
                child = node._get_node(key)
                if OmegaConf.is_config(child):
                    unfreeze(child)

    node = OmegaConf.structured(schema)
    unfreeze(node)
    return node


def compose(path: Path, overrides: list[str], schema: type, schema_name: str) -> dict[str, Any]:
    """The sweep file at `path` composed over `schema` with `overrides`, as plain data."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    selected = _group_overrides(path, overrides)
    with _LOCK:
        store = ConfigStore.instance()
        store.store(name=schema_name, node=_schema_node(schema))
        # Schema first, then the user's file, then the file's own body: the file only overrides.
        entry: dict[str, Any] = {"defaults": [schema_name, path.stem, "_self_"]}
        if SHARED_GROUPS.is_dir():
            entry["hydra"] = {"searchpath": [f"file://{SHARED_GROUPS}"]}
        store.store(name=_ENTRY_NAME, node=entry)
        try:
            with initialize_config_dir(config_dir=str(path.resolve().parent), version_base=None):
                cfg = hydra_compose(config_name=_ENTRY_NAME, overrides=selected)
            return OmegaConf.to_container(cfg, resolve=True)
        except UserError:
            raise
        except Exception as e:  # Hydra/OmegaConf errors carry the field in their text
            raise UserError(_explain(e, str(path), overrides, schema)) from None


def _is_group(path: Path, name: str) -> bool:
    """Whether `name` is a config group on the sweep file's search path."""
    return any((root / name).is_dir() and any((root / name).glob("*.yaml"))
               for root in (path.resolve().parent, SHARED_GROUPS))


def _named_groups(path: Path) -> set[str]:
    """The config groups the sweep file's defaults list names."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # Hydra reports the file's own problem in its words
        return set()
    defaults = doc.get("defaults") if isinstance(doc, dict) else None
    named = set()
    for item in defaults if isinstance(defaults, list) else ():
        for key in item if isinstance(item, dict) else ():
            # "override data", "optional eval", "/data@pkg" all name a group.
            named.add(str(key).split()[-1].lstrip("/").split("@")[0])
    return named


def _group_overrides(path: Path, overrides: list[str]) -> list[str]:
    """Hydra selects a group option with `group=option` only where the defaults list already
    names the group, and appends one with `+group=option` only where it does not. Which of
    the two a sweep file needs is its own detail, so either spelling works on any file (an
    appended group comes after the file's body, so the option the user names wins)."""
    named = _named_groups(path)
    out = []
    for ov in overrides:
        plus = ov.startswith("+") and not ov.startswith("++")
        key, eq, value = ov[plus:].partition("=")
        option = value != "null" and re.fullmatch(r"[\w.-]+(/[\w.-]+)*", value)
        if eq and option and re.fullmatch(r"[\w-]+", key) and _is_group(path, key):
            ov = f"{key}={value}" if key in named else f"+{key}={value}"
        out.append(ov)
    return out


def _fields_at(schema: type, dotted: str) -> list[str] | None:
    """Field names of the dataclass at a dotted path of the schema (None if not a dataclass)."""
    cls: Any = schema
    for part in [x for x in dotted.split(".") if x]:
        hints = get_type_hints(cls)
        if part not in hints or not is_dataclass(hints[part]):
            return None
        cls = hints[part]
    return [f.name for f in fields(cls)]


def _explain(exc: BaseException, path: str, overrides: list[str], schema: type) -> str:
    texts, e = [], exc
    while e is not None and len(texts) < 5:
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    text = "\n".join(texts)
    where = path
    for ov in overrides:
        key = ov.lstrip("+~").split("=", 1)[0]
        if f"'{key}'" in text or f"override {ov}" in text or f"full_key: {key}\n" in text + "\n":
            where = f"{path} (override {ov!r})"
            break
    m = re.search(r'in "([^"]+)", line (\d+), column (\d+)', text)
    if m and type(exc).__name__ in ("ParserError", "ScannerError", "ComposerError"):
        lines = [ln.strip() for ln in texts[0].splitlines() if ln.strip() and not ln.startswith("  in ")]
        return f"{m.group(1)}:{m.group(2)}:{m.group(3)}: invalid YAML: {lines[-1]} ({lines[0]})"
    if "Cannot merge DictConfig with ListConfig" in text:
        return f"{where}: a sweep file must be a mapping of fields (name: ..., models: [...]), not a list"
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:  # a config-group option (e.g. eval=quick) that has no file
        group, option = m.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1].split("Config search path", 1)[0], re.M)
        return (f"{where}: {group}: no config {option!r} in group {group!r}{did_you_mean(option, options)}; "
                f"available: {', '.join(options) or 'none'}")
    m = re.search(r"full_key: (\S+)", text)
    key = m.group(1) if m else None
    if key is None:
        m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' (?:is )?not in", text)
        key = m.group(1) if m else None
    if re.search(r"Key '[^']+' (is )?not in|Could not override|ConfigKeyError|ConfigAttributeError", text) and key:
        parent, _, leaf = key.rpartition(".")
        allowed = _fields_at(schema, parent)
        if allowed is None and parent:  # a mapping field (init_checkpoint, data.caps, ...)
            return f"{where}: {key!r} is a new entry of {parent}; add it with '+{key}=VALUE'"
        allowed = allowed or []
        return (f"{where}: unknown field {key!r}{did_you_mean(leaf, allowed)}; allowed"
                f"{' in ' + parent if parent else ''}: {', '.join(allowed)}")
    m = re.search(r"Value '([^']*)' of type '(\w+)' could not be converted to (\w+)", text)
    if m and key:
        return f"{where}: field {key!r}: {m.group(1)!r} is not a valid {m.group(3).lower()}"
    m = re.search(r"Invalid type assigned: (\w+) is not a subclass of (\w+)", text)
    if m and key:
        return f"{where}: field {key!r}: got a {m.group(1)}, expected a {m.group(2)} section"
    m = re.search(r"Invalid value assigned: (\w+) is not a ListConfig", text)
    if m and key:
        return f"{where}: field {key!r}: got a {m.group(1)}, expected a list such as {key}=[a,b]"
    if "OverrideParseException" in text or "override_grammar" in text:
        bad = next((ov for ov in overrides if ov.split("=", 1)[0] in text or ov in text), " ".join(overrides))
        return f"{path}: override {bad!r} is not valid; use key=value (Hydra override syntax, e.g. task_counts=[9,89])"
    first = next((ln.strip() for t in texts for ln in t.splitlines() if ln.strip()), type(exc).__name__)
    return f"{where}: {first}" + (f" (field {key!r})" if key else "")
