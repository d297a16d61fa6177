"""Sweep specs: Hydra composition, typed overrides, and one clear line for every bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.spec import FORMAT_SETS, SCHEMA_NAME, SweepSpec, load_spec
from trainers.spec import UserError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sweeps" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_demo_loads_typed_and_frozen():
    spec = load_spec(DEMO, [])
    assert isinstance(spec, SweepSpec)
    assert spec.name == "demo"
    assert spec.models == ("tiny-1", "tiny-2")
    assert spec.task_counts == (0, 9, 282) and spec.seeds == (0, 1)
    assert spec.accelerator == "cpu" and spec.max_concurrent == 1
    assert spec.data.tokenizer == "byte" and spec.data.source == "synthetic"
    assert isinstance(spec.eval.benchmarks, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


def test_hydra_overrides_are_typed():
    spec = load_spec(DEMO, ["task_counts=[9,89]", "models=[tiny-1]", "optim.learning_rate=1e-3",
                            "formats=[mixed,no_cot]", "accelerator=tpu-v4", "budget.max_device_hours=5"])
    assert spec.task_counts == (9, 89)
    assert spec.models == ("tiny-1",)
    assert spec.optim.learning_rate == pytest.approx(1e-3)
    assert spec.formats == ("mixed", "no_cot")
    assert spec.accelerator == "tpu-v4"
    assert spec.budget.max_device_hours == 5.0


def test_schema_defaults_fill_missing_sections_and_registered(tmp_path):
    from hydra.core.config_store import ConfigStore

    spec = load_spec(write(tmp_path, "name: x\nmodels: [tiny-2]\n"), ["optim.steps=7"])
    assert spec.formats == ("mixed",) and spec.mfu is None and spec.optim.steps == 7
    assert spec.optim.batch_size is None  # None = the preset's Table 22 value
    assert ConfigStore.instance().load(f"{SCHEMA_NAME}.yaml") is not None


def test_paper_specs_resolve_interpolation(monkeypatch):
    monkeypatch.setenv("FLAN_DATA", "/mnt/flan")
    t5 = load_spec(ROOT / "sweeps/paper/flan_t5.yaml", [])
    palm = load_spec(ROOT / "sweeps/paper/flan_palm.yaml", [])
    assert t5.models == ("t5-small", "t5-base", "t5-large", "t5-xl", "t5-xxl")
    assert palm.models == ("palm-8b", "palm-62b", "palm-540b", "cont-palm-62b", "u-palm-540b")
    assert set(t5.task_counts) >= {9, 89, 282, 1836} and t5.accelerator == palm.accelerator == "tpu-v4"
    assert t5.data.paths == ("/mnt/flan",)


def test_format_sets_map_to_data_formats():
    formats, with_cot = FORMAT_SETS["mixed"]
    assert set(formats) == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "cot"} and with_cot
    for name in ("zs", "fs", "no_cot"):
        formats, with_cot = FORMAT_SETS[name]
        assert "cot" not in formats and not with_cot


BAD = [
    # (yaml body or None for the demo, overrides, substrings the one line must contain)
    ("name: x\noptim:\n  stepz: 3\n", [], ["optim.stepz", "did you mean 'steps'", "allowed in optim"]),
    (None, ["optim.stepz=3"], ["override 'optim.stepz=3'", "unknown field 'optim.stepz'", "steps"]),
    (None, ["foo=1"], ["unknown field 'foo'", "allowed: name, models"]),
    ("name: x\noptim:\n  steps: many\n", [], ["optim.steps", "'many'", "integer"]),
    (None, ["mfu=fast"], ["field 'mfu'", "'fast'", "float"]),
    (None, ["models=tiny-1"], ["field 'models'", "expected a list"]),
    (None, ["models=[tiny-4]"], ["models", "'tiny-4'", "did you mean 'tiny-3'", "allowed: tiny-0, tiny-1"]),
    (None, ["models=[t5-xxxl]"], ["'t5-xxxl'", "did you mean 't5-xxl'"]),
    (None, ["accelerator=tpu-v9"], ["accelerator", "'tpu-v9'", "allowed: cpu"]),
    (None, ["optim.steps=-5"], ["optim.steps", "-5", ">= 0"]),
    (None, ["optim.batch_size=6", "mesh.data=4"], ["batch_size", "6", "data axis"]),
    (None, ["mesh.tensor=3"], ["mesh", "slice size"]),
    (None, ["formats=[mix]"], ["formats", "'mix'", "did you mean 'mixed'"]),
    (None, ["task_counts=[9,5000]"], ["task_counts", "5000", "1836"]),
    (None, ["task_counts=[9,9]"], ["task_counts", "twice"]),
    (None, ["eval.benchmarks=[mmlu,gsm8k]"], ["eval.benchmarks", "'gsm8k'", "allowed: mmlu"]),
    (None, ["max_devices=3"], ["max_devices", "slice size"]),
    (None, ["data.source=flan"], ["data.paths", "empty"]),
    (None, ["+init_checkpoint={tiny-9: /x}"], ["init_checkpoint", "'tiny-9'"]),
    (None, ["optim.micro_batches=3"], ["micro_batches", "does not divide"]),
    (None, ["a b"], ["override 'a b'", "key=value"]),
    (None, ["+data.proportions.cot=1.0"], ["data.proportions", "mixture=custom"]),
    (None, ["data.mixture=custom"], ["data.proportions", "empty"]),
    (None, ["+data.caps.niv3=5"], ["data.caps", "'niv3'", "did you mean 'niv2'"]),
    (None, ["eval.shots=-2"], ["eval.shots", "-2", "0 = zero-shot"]),
    (None, ["eval.direct_max_new_tokens=-1"], ["eval.direct_max_new_tokens", ">= 0"]),
    (None, ["eval.batch_size=0"], ["eval.batch_size", "> 0"]),
]


@pytest.mark.parametrize("body,overrides,needles", BAD)
def test_bad_specs_give_one_line(tmp_path, body, overrides, needles):
    path = DEMO if body is None else write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_spec(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)), msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(UserError, match="no such sweep file"):
        load_spec(tmp_path / "nope.yaml", [])
    with pytest.raises(UserError, match=r"must end in \.yaml"):
        load_spec(write(tmp_path, "name: x\n", "s.yml"), [])


def test_shared_config_groups(tmp_path):
    assert load_spec(DEMO, ["eval=none"]).eval.benchmarks == ()
    assert not load_spec(DEMO, ["eval=none"]).eval.loss
    quick = load_spec(DEMO, ["eval=quick", "eval.max_examples=3"]).eval
    assert quick.benchmarks == ("mmlu", "bbh", "tydiqa", "mgsm") and quick.max_examples == 3
    unseen = load_spec(DEMO, []).eval
    assert unseen.benchmarks == ("unseen_mc", "unseen_reasoning", "unseen_qa", "unseen_arith")
    assert unseen.modes == ("direct", "cot", "rc") and unseen.loss
    synthetic = load_spec(ROOT / "sweeps/paper/flan_t5.yaml", ["data=synthetic"]).data
    assert synthetic.source == "synthetic" and synthetic.tokenizer == "byte"
    with pytest.raises(UserError, match=r"no config 'quik' in group 'eval' \(did you mean 'quick'\?\); available: "):
        load_spec(DEMO, ["eval=quik"])
    # A sweep file anywhere can name the shared groups; its own directory's groups come first.
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "quick.yaml").write_text("benchmarks: [bbh]\n")
    own = write(tmp_path, "defaults:\n  - eval: quick\n  - _self_\nname: x\n")
    assert load_spec(own, []).eval.benchmarks == ("bbh",)
    shared = write(tmp_path, "defaults:\n  - eval: paper_sc\n  - _self_\nname: x\n", "t.yaml")
    assert "sc" in load_spec(shared, []).eval.modes


def test_malformed_files(tmp_path):
    with pytest.raises(UserError, match=r"s\.yaml:1:7: invalid YAML: expected ',' or '\]'"):
        load_spec(write(tmp_path, "name: [unclosed\n"), [])
    with pytest.raises(UserError, match="must be a mapping of fields"):
        load_spec(write(tmp_path, "- a\n- b\n"), [])
    with pytest.raises(UserError, match=r"Interpolation key 'nope' not found \(field 'mfu'\)"):
        load_spec(write(tmp_path, "name: x\nmfu: ${nope}\n"), [])
    with pytest.raises(UserError, match="the sweep file is empty"):  # not silently the schema's default sweep
        load_spec(write(tmp_path, ""), [])
