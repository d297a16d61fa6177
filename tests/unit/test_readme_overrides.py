"""Every sweep override the README shows, on every shipped sweep file, through `flanscale plan`.

The overrides are read from the README itself (its `flanscale plan|sweep|k8s` command lines
and the `key=value` spans of its prose whose key is a sweep field), so an override added to
the README is tested without touching this file. Each must compose, validate, plan, and
change the spec the way it says.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.compose import SHARED_GROUPS
from orchestrator.spec import SweepSpec, load_spec
from trainers.spec import UserError

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = [ROOT / "sweeps" / "demo.yaml", ROOT / "sweeps" / "paper" / "flan_t5.yaml",
          ROOT / "sweeps" / "paper" / "flan_palm.yaml"]
FLAN = ROOT / "tests" / "fixtures" / "flan"
FIELDS = set(SweepSpec.__dataclass_fields__)
COMMAND = re.compile(r"flanscale (?:plan|sweep (?:run|submit|status)|k8s (?:render|submit)) \S+((?: +[^\s`]+)*)")
OVERRIDE = re.compile(r"\+?([a-z_][\w-]*)(?:\.[\w.-]+)?=\S+")


def readme_overrides() -> tuple[list[str], list[tuple[str, ...]]]:
    """(single overrides, the override sets of whole command lines) shown in the README."""
    text = (ROOT / "README.md").read_text()
    singles: list[str] = []
    commands: list[tuple[str, ...]] = []
    for m in COMMAND.finditer(text):
        words = list(itertools.takewhile(lambda w: not w.startswith(("-", "#")), m.group(1).split()))
        found = tuple(w for w in words if OVERRIDE.fullmatch(w) and OVERRIDE.fullmatch(w).group(1) in FIELDS)
        if found:
            commands.append(found)
            singles.extend(found)
    for span in re.findall(r"`([^`\n]+)`", text):
        m = OVERRIDE.fullmatch(span)
        if m and m.group(1) in FIELDS:
            key, value = span.split("=", 1)
            singles.extend(f"{key}={v}" for v in value.split("|"))  # eval=unseen|quick|... lists options
    # `seeds=[...]` stands for any list: the prose around it says so; placeholders are not values.
    singles = [s for s in dict.fromkeys(singles) if "..." not in s]
    return singles, list(dict.fromkeys(commands))


SINGLES, COMMANDS = readme_overrides()
# Cases the README implies that need more than its words: the Flan group with data that exists,
# a grid axis, unsetting a field, and the checkpoint override for each file's own preset.
EXTRA = [("data=flan", f"data.paths=[{FLAN}]"), ("seeds=[0,1]",), ("budget.max_device_hours=null",),
         ("data=synthetic", "eval=quick")]
# Overrides that are right to refuse on some files; the refusal is the one line that says why.
REFUSED = {
    ("demo.yaml", "min_devices=512"): "512 is not a cpu slice size",
    ("flan_t5.yaml", "+init_checkpoint.tiny-1=PATH"): "'tiny-1' is not one of this sweep's models",
    ("flan_palm.yaml", "+init_checkpoint.tiny-1=PATH"): "'tiny-1' is not one of this sweep's models",
}
CASES = list(dict.fromkeys([(s,) for s in SINGLES] + COMMANDS + EXTRA))


def test_the_readme_shows_the_overrides_this_test_is_about():
    """The extraction finds the README's overrides (a broken pattern would test nothing)."""
    assert {"eval=unseen", "eval=quick", "eval=paper", "eval=paper_sc", "eval=none", "data=flan", "data=synthetic",
            "task_counts=[9,89]", "models=[tiny-1]", "optim.learning_rate=1e-3", "+init_checkpoint.tiny-1=PATH",
            "+data.caps.niv2=1000", "min_devices=512", "accelerator=h100-80g", "optim.steps=20"} <= set(SINGLES)
    assert ("task_counts=[9,89]", "models=[tiny-1]", "optim.learning_rate=1e-3") in COMMANDS
    assert not [s for s in SINGLES if s.split("=")[0].lstrip("+").split(".")[0] not in FIELDS]


@pytest.fixture
def plan_cli(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("plan",))

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _expected(override: str, base: Path) -> tuple[str, object]:
    """(dotted field, value it must have) for a plain override; groups are checked apart."""
    key, value = override.lstrip("+").split("=", 1)
    parsed = yaml.safe_load(value.replace("PATH", str(base)))
    return key, [_number(v) for v in parsed] if isinstance(parsed, list) else _number(parsed)


def _number(parsed: object) -> object:
    if isinstance(parsed, str):
        try:
            return float(parsed)  # YAML 1.1 reads 1e-3 as a string; Hydra as a float
        except ValueError:
            pass
    return parsed


def _lookup(doc: dict, dotted: str) -> object:
    for part in dotted.split("."):
        doc = doc[part]
    return doc


def _check_effect(sweep: Path, spec: SweepSpec, overrides: tuple[str, ...], base: Path) -> None:
    doc = spec.to_dict()
    source = yaml.safe_load(sweep.read_text())
    named = {k for d in source.get("defaults", []) if isinstance(d, dict) for k in d}
    for ov in overrides:
        key = ov.lstrip("+").split("=", 1)[0]
        if (SHARED_GROUPS / key).is_dir():  # a group option: the spec holds what its file says
            option = yaml.safe_load((SHARED_GROUPS / key / f"{ov.split('=', 1)[1]}.yaml").read_text())
            for field, value in option.items():
                if isinstance(value, list) and any("${" in str(v) for v in value):
                    continue  # an environment interpolation, resolved where the sweep is composed
                if any(o.lstrip("+").startswith(f"{key}.{field}=") for o in overrides):
                    continue  # set again after the group, on purpose
                if key in named and field in (source.get(key) or {}):
                    value = source[key][field]  # Hydra's order: the file's own section after its defaults
                assert _lookup(doc, f"{key}.{field}") == value, (ov, field)
            continue
        field, value = _expected(ov, base)
        got = _lookup(doc, field)
        if isinstance(value, list):
            assert list(got) == value, (ov, got)
        else:
            assert got == value, (ov, got)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
@pytest.mark.parametrize("overrides", CASES, ids=lambda c: " ".join(c).replace(str(ROOT) + "/", ""))
def test_readme_override_plans_on_every_shipped_sweep(plan_cli, sweep, overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("FLAN_DATA", raising=False)
    base = tmp_path / "base"
    base.mkdir()
    argv = [ov.replace("PATH", str(base)) for ov in overrides]
    refusal = next((REFUSED[(sweep.name, ov)] for ov in overrides if (sweep.name, ov) in REFUSED), None)
    code, out, err = plan_cli("plan", str(sweep), *argv, "--format", "json")
    if refusal is not None:
        assert code == 2 and refusal in err and len(err.strip().splitlines()) == 1, err
        return
    assert code == 0, err
    cells = json.loads(out)
    assert cells and any(c["feasible"] for c in cells), out[:2000]
    _check_effect(sweep, load_spec(sweep, argv), overrides, base)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_checkpoint_override_for_the_files_own_preset(sweep, tmp_path):
    model = load_spec(sweep).models[0]
    spec = load_spec(sweep, [f"+init_checkpoint.{model}={tmp_path}"])
    assert spec.init_checkpoint == {model: str(tmp_path)}


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_a_group_option_works_with_or_without_plus(sweep):
    """`data=flan` selects where the file names the group and appends where it does not;
    `+data=flan` is accepted either way, and a misspelt option names the ones there are."""
    assert load_spec(sweep, ["data=flan"]) == load_spec(sweep, ["+data=flan"])
    assert load_spec(sweep, ["eval=none"]) == load_spec(sweep, ["+eval=none"])
    with pytest.raises(UserError) as info:
        load_spec(sweep, ["data=flna"])
    msg = str(info.value)
    assert "\n" not in msg and "override 'data=flna'" in msg and "did you mean 'flan'" in msg and "synthetic" in msg


def test_a_group_option_on_a_file_without_that_group_wins_over_the_files_section(tmp_path):
    """A sweep file that sets data.source itself and names no data group: data=flan means Flan."""
    sweep = tmp_path / "mine.yaml"
    sweep.write_text("name: mine\nmodels: [tiny-1]\ndata:\n  source: synthetic\n  tokenizer: byte\n  input_length: 64\n")
    spec = load_spec(sweep, ["data=flan", f"data.paths=[{FLAN}]"])
    assert spec.data.source == "flan" and spec.data.tokenizer == "spm" and spec.data.paths == (str(FLAN),)
    assert spec.data.input_length == 64  # what the group does not set stays the file's
    demo = load_spec(ROOT / "sweeps" / "demo.yaml", ["data=flan"])
    assert demo.data.source == "flan" and demo.data.input_length == 256


def test_a_group_folder_next_to_the_sweep_file_is_searched_first(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "mine.yaml").write_text("benchmarks: [mmlu]\nmodes: [direct]\n")
    (tmp_path / "eval" / "none.yaml").write_text("benchmarks: [bbh]\nmodes: [direct]\nloss: false\n")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nmodels: [tiny-1]\n")
    assert load_spec(sweep, ["eval=mine"]).eval.benchmarks == ("mmlu",)
    assert load_spec(sweep, ["eval=none"]).eval.benchmarks == ("bbh",)  # the local one, not the shipped one
    assert load_spec(sweep, ["eval=quick"]).eval.max_examples == 2  # shipped groups still reachable
