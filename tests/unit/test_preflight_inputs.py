"""`sweep run` reads every input a cell will read before anything is placed: every record of
every Flan export, the task count against the exports' tasks, the tokenizer's ids against
each model's vocabulary and each base checkpoint's architecture. A bad one is one line, exit
2, and nothing is written: no MLflow store, no run, no checkpoint, no validation cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator import preflight
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from trainers.data import check
from trainers.spec import ModelConfig, UserError, to_dict

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sweeps" / "demo.yaml"
FLAN = ROOT / "tests" / "fixtures" / "flan"
REC = {"inputs": "x", "targets": "y", "task_source": "Flan2021", "task_name": "t", "template_type": "zs_opt"}


def lines(n: int, **changes: str) -> str:
    return "".join(json.dumps({**REC, "task_name": f"t{i % 3}", **changes}) + "\n" for i in range(n))


@pytest.fixture
def flan(tmp_path) -> Path:
    """A copy of the Flan fixtures the test may spoil."""
    shutil.copytree(FLAN, tmp_path / "flan")
    return tmp_path / "flan"


def base_checkpoint(root: Path, **changes) -> Path:
    (root / "params").mkdir(parents=True)
    (root / "params" / "manifest.ocdbt").write_bytes(b"x")
    (root / "model.json").write_text(json.dumps({**to_dict(ModelConfig()), **changes}))
    return root


def refused(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---------------------------------------------------------------- every record, streamed


def test_a_bad_record_anywhere_is_found_with_its_line_and_field(tmp_path):
    f = tmp_path / "export.jsonl"
    f.write_text(lines(29) + '{"inputs": "x", "targets": \n' + lines(5))
    msg = refused(check.flan_exports, (str(f),), "s.yaml: data.paths")
    assert msg == f"s.yaml: data.paths: {f}:30: not valid JSON (Expecting value at column 29)"
    f.write_text(lines(40) + json.dumps({**REC, "targets": 3}) + "\n")
    assert refused(check.flan_exports, (str(f),)).endswith(
        f"{f}:41: field 'targets' missing or not a string; need inputs, targets, task_source, task_name, template_type")
    f.write_text(lines(7) + lines(1, template_type="zz"))
    assert f"{f}:8: template_type 'zz' unknown" in refused(check.flan_exports, (str(f),))
    f.write_text(lines(3) + lines(1, task_source="NIv2"))  # t0 was Flan2021 on line 1
    assert refused(check.flan_exports, (str(f),)).endswith(
        f"{f}:4: task 't0' has task_source 'NIv2', but line 1 has 'Flan2021'; a task belongs to one sub-mixture")


def test_the_cache_skips_unchanged_exports_and_keeps_nothing_from_a_failed_check(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(lines(50))
    bad.write_text(lines(5) + "[]\n")
    cache = check.ValidationCache(tmp_path / "cache")
    with pytest.raises(UserError, match=r"bad.jsonl:6: expected a JSON object"):
        check.flan_exports((str(good), str(bad)), "data.paths", cache)
    assert not (tmp_path / "cache").exists()  # the good file's entry waits for a commit that never came

    cache = check.ValidationCache(tmp_path / "cache")
    first = check.flan_exports((str(good),), "data.paths", cache)
    cache.commit()
    assert (first.records, sorted(first.tasks)) == (50, ["t0", "t1", "t2"])
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    read = []
    real = check._check_export
    monkeypatch.setattr(check, "_check_export", lambda p: read.append(p) or real(p))
    assert check.flan_exports((str(good),), "data.paths", check.ValidationCache(tmp_path / "cache")) == first
    assert read == []  # unchanged: not read again
    good.write_text(lines(49) + "{oops\n")  # same size class, new content and time: read again
    with pytest.raises(UserError, match=r"good.jsonl:50: not valid JSON"):
        check.flan_exports((str(good),), "data.paths", check.ValidationCache(tmp_path / "cache"))
    assert read == [good]


def test_an_unwritable_cache_only_means_nothing_is_remembered(tmp_path):
    f = tmp_path / "export.jsonl"
    f.write_text(lines(3))
    (tmp_path / "file").write_text("")
    cache = check.ValidationCache(tmp_path / "file" / "cache")  # under a file: cannot be created
    assert check.flan_exports((str(f),), "data.paths", cache).records == 3
    cache.commit()


# ---------------------------------------------------------------- what the cells ask of the inputs


def test_check_inputs_checks_task_counts_tokenizer_ids_and_architectures(tmp_path, empty_home, flan):
    spec = load_spec(DEMO, ["data=flan", f"data.paths=[{flan}]", "models=[tiny-1]", "task_counts=[11]"])
    remember = preflight.check_inputs(spec, "demo.yaml", plan(spec))
    assert not empty_home.exists()  # written only when the caller's other checks passed too
    remember()
    assert len(list((empty_home / preflight.PREFLIGHT_CACHE).glob("*.json"))) == 5  # one per export file

    spec = load_spec(DEMO, ["data=flan", f"data.paths=[{flan}]", "models=[tiny-1]", "task_counts=[50]"])
    assert refused(preflight.check_inputs, spec, "demo.yaml", plan(spec)) == (
        "demo.yaml: task_counts: 50 but the Flan exports under data.paths hold only 11 tasks "
        "(cot 2, muffin 4, niv2 3, t0sf 2); give counts of at most 11")

    small = base_checkpoint(tmp_path / "small", vocab_size=107)
    spec = load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", f"+init_checkpoint.tiny-1={small}"])
    assert refused(preflight.check_inputs, spec, "demo.yaml", plan(spec)) == (
        f"demo.yaml: init_checkpoint.tiny-1: {small} has vocab_size 107, fewer than the 259 ids of data.tokenizer "
        "'byte'; give a tokenizer of at most 107 ids ('spm' trains one) or a model with its vocabulary")
    odd = base_checkpoint(tmp_path / "odd", num_heads=4, num_kv_heads=3)
    spec = load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", f"+init_checkpoint.tiny-1={odd}"])
    message = f"init_checkpoint.tiny-1: {odd / 'model.json'}: model.num_kv_heads: 3 must divide num_heads 4 (0 = num_heads)"
    assert refused(plan, spec) == message  # the planner counts the checkpoint's architecture, so it reads it first
    assert refused(check.base_checkpoint, str(odd), "demo.yaml: init_checkpoint.tiny-1") == f"demo.yaml: {message}"


# ---------------------------------------------------------------- the command: exit 2, nothing written


def _nothing_written(home: Path, tmp_path: Path) -> None:
    assert not home.exists(), sorted(home.rglob("*"))  # no mlflow.db, run, checkpoint or cache
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.rglob("mlruns"))


@pytest.mark.parametrize("case", ["bad_line_30", "task_count", "tokenizer_ids", "architecture", "tracking_uri"])
def test_sweep_run_refuses_bad_inputs_before_anything_is_written(case, cli_runner, empty_home, flan, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["models=[tiny-1]", "task_counts=[11]", "data=flan", f"data.paths=[{flan}]", "eval=none"]
    if case == "bad_line_30":
        text = (flan / "flan2021.jsonl").read_text().splitlines(keepends=True) * 2
        text[29] = text[29][: len(text[29]) // 2] + "\n"
        (flan / "flan2021.jsonl").write_text("".join(text))
        needle = f"data.paths: {flan / 'flan2021.jsonl'}:30: not valid JSON"
    elif case == "task_count":
        args[1] = "task_counts=[50]"
        needle = "task_counts: 50 but the Flan exports under data.paths hold only 11 tasks"
    elif case == "tracking_uri":  # good inputs, then a bad flag: the inputs are not remembered either
        args += ["--tracking-uri", "ftp://nowhere"]
        needle = "--tracking-uri ftp://nowhere: unknown scheme 'ftp'"
    elif case == "architecture":
        other = base_checkpoint(tmp_path / "gpt", family="gpt")
        args.append(f"+init_checkpoint.tiny-1={other}")
        needle = f"init_checkpoint.tiny-1: {other / 'model.json'}: model.family: unknown 'gpt'; allowed: t5, decoder"
    else:
        small = base_checkpoint(tmp_path / "t5-small", vocab_size=107)
        args += [f"+init_checkpoint.tiny-1={small}", "data.tokenizer=byte"]
        needle = f"init_checkpoint.tiny-1: {small} has vocab_size 107, fewer than the 259 ids"
    code, out, err = cli_runner("sweep")("sweep", "run", str(DEMO), *args, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("flanscale: error: ") and needle in err, err
    _nothing_written(empty_home, tmp_path)
