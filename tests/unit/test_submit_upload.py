"""What `flanscale sweep submit` and `flanscale k8s submit` send: the composed spec, which
reads back to the very spec that was planned, plus only the paths named with --upload; bad
uploads are one line before any cluster is contacted."""

from __future__ import annotations

import dataclasses
import os
import types
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.commands import sweep as sweep_cmd
from orchestrator.spec import dump_spec, load_spec
from trainers.spec import UserError

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = [ROOT / "sweeps" / "demo.yaml", ROOT / "sweeps" / "paper" / "flan_t5.yaml",
          ROOT / "sweeps" / "paper" / "flan_palm.yaml"]
MiB = 2**20


@pytest.fixture
def submit(monkeypatch, capsys, tmp_path):
    """`flanscale sweep submit` against a port nothing listens on: the errors under test come first."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("sweep",))
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["sweep", "submit", str(SWEEPS[0]), "models=[tiny-1]", *argv,
                         "--ray-address", "http://127.0.0.1:9"])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_the_composed_spec_reads_back_to_the_same_spec_without_any_group(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAN_DATA", "/mnt/flan")
    spec = load_spec(sweep, ["task_counts=[9,89]", "eval=quick", "+data.caps.niv2=1000"])
    text = dump_spec(spec)
    assert "defaults" not in yaml.safe_load(text) and "${" not in text
    (tmp_path / "sweep.yaml").write_text(text)
    monkeypatch.setattr("orchestrator.compose.SHARED_GROUPS", tmp_path / "no-groups-here")
    assert load_spec(tmp_path / "sweep.yaml") == spec


def test_the_working_dir_holds_the_spec_and_the_uploads_only(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "tok").mkdir(parents=True)
    (home / "tok" / "spiece.model").write_bytes(b"\x00\x01model")
    (home / "tok" / "nested").mkdir()
    (home / "tok" / "nested" / "a.txt").write_text("a")
    (home / "tok" / ".gitignore").write_text("*.model\n")  # Ray would drop what it lists
    (home / "private.key").write_text("never sent")
    spec = load_spec(SWEEPS[0], ["models=[tiny-1]", f"data.tokenizer={home / 'tok' / 'spiece.model'}"])
    workdir = tmp_path / "wd"
    workdir.mkdir()
    sent = sweep_cmd.fill_working_dir(workdir, spec, [str(home / "tok")], MiB)
    files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert files == ["sweep.yaml", "tok/nested/a.txt", "tok/spiece.model"]
    assert (workdir / "tok" / "spiece.model").read_bytes() == b"\x00\x01model"
    assert sent == len(b"\x00\x01model") + 1
    monkeypatch.chdir(workdir)  # where the job reads it
    shipped = load_spec(workdir / "sweep.yaml")
    assert shipped == dataclasses.replace(spec, data=dataclasses.replace(spec.data, tokenizer="tok/spiece.model"))


def test_every_field_naming_an_upload_points_into_the_working_dir(tmp_path, monkeypatch):
    user, elsewhere = tmp_path / "user", tmp_path / "elsewhere"
    (elsewhere / "tok").mkdir(parents=True)
    (elsewhere / "tok" / "my.model").write_bytes(b"m")
    (elsewhere / "flan" / "more").mkdir(parents=True)
    (elsewhere / "ckpt" / "params").mkdir(parents=True)
    (elsewhere / "mmlu").mkdir()
    user.mkdir()
    monkeypatch.chdir(user)
    spec = load_spec(SWEEPS[0], ["models=[tiny-1]", "data=flan", "data.paths=[../elsewhere/flan/more,/datasets/x]",
                                 "data.tokenizer=../elsewhere/tok/my.model", "+init_checkpoint.tiny-1=../elsewhere/ckpt",
                                 f"eval.data_dir={elsewhere / 'mmlu'}"])
    shipped = sweep_cmd.uploaded_spec(spec, ["../elsewhere/tok/my.model", "../elsewhere/flan", str(elsewhere / "ckpt"),
                                             "../elsewhere/mmlu"])
    assert shipped.data.paths == ("flan/more", "/datasets/x")  # inside an uploaded folder; not uploaded
    assert (shipped.data.tokenizer, shipped.init_checkpoint, shipped.eval.data_dir) == (
        "my.model", {"tiny-1": "ckpt"}, "mmlu")
    assert sweep_cmd.uploaded_spec(spec, []) is spec


def test_k8s_ships_the_rewritten_spec(tmp_path, monkeypatch):
    from orchestrator.commands.k8s import _documents

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "my.model").write_bytes(b"m")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    args = types.SimpleNamespace(spec=str(SWEEPS[0]), overrides=["models=[tiny-1]", "data.tokenizer=../tok/my.model"],
                                 overlay=None, namespace="flanscale", image="", name="", backoff_limit=2, home_pvc="",
                                 data_pvc="", upload=["../tok/my.model"], retry_failed=False, register_models=False,
                                 skip_infeasible=False)
    (configmap,) = [d for d in _documents(args) if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(configmap["data"]["sweep.yaml"])["data"]["tokenizer"] == "my.model"
    assert list(configmap["binaryData"]) == ["upload-0"]


def test_the_entrypoint_runs_the_composed_spec_with_nothing_else_from_the_command_line():
    args = types.SimpleNamespace(tracking_uri="http://mlflow:5000", retry_failed=True, max_concurrent=8,
                                 register_models=False)
    assert sweep_cmd.submit_entrypoint(args) == (
        "flanscale sweep run sweep.yaml --no-progress --tracking-uri http://mlflow:5000 --retry-failed")


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_a_missing_upload_is_one_line(submit):
    _one_line(*submit("--upload", "nope/spiece.model")[::2], "--upload nope/spiece.model: no such file or directory")


def test_an_unreadable_file_in_an_upload_is_one_line(submit, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.txt").write_text("ok")
    os.symlink(tmp_path / "gone.txt", tmp_path / "data" / "dangling.txt")
    code, _, err = submit("--upload", "data")
    _one_line(code, err, "--upload data: cannot read", "dangling.txt", "No such file or directory")


def test_an_upload_over_the_limit_is_one_line(submit, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_cmd, "UPLOAD_LIMIT", MiB)
    (tmp_path / "big").mkdir()
    for i in range(3):
        (tmp_path / "big" / f"part{i}.bin").write_bytes(b"\0" * (MiB // 2))
    code, _, err = submit("--upload", "big")
    _one_line(code, err, "--upload big: the uploads come to more than 1 MiB", "storage the cluster mounts")


def test_upload_names_must_not_collide(submit, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "vocab.model").write_text(d)
    (tmp_path / "sweep.yaml").write_text("name: x\n")
    code, _, err = submit("--upload", "a/vocab.model", "--upload", "b/vocab.model")
    _one_line(code, err, "--upload b/vocab.model", "already has 'vocab.model' (--upload a/vocab.model)")
    code, _, err = submit("--upload", "sweep.yaml")
    _one_line(code, err, "--upload sweep.yaml", "already has 'sweep.yaml' (the composed spec)")


def test_a_linked_folder_inside_an_upload_is_refused(submit, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "up").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "up" / "link")
    code, _, err = submit("--upload", "up")
    _one_line(code, err, "--upload up:", "is a link to a folder")


def test_an_upload_no_field_names_is_one_line(submit, tmp_path):
    _one_line(*submit("--upload", "/etc/hostname")[::2],
              "--upload /etc/hostname: no spec field names it, so the job would not read it; point one of "
              "data.paths, data.tokenizer, init_checkpoint.MODEL, eval.data_dir at it, or leave it out")
    (tmp_path / "flan").mkdir()
    (tmp_path / "flan" / "a.jsonl").write_text("{}\n")
    _one_line(*submit("data=flan", "data.paths=[flan]", "--upload", "flan/a.jsonl")[::2],
              "--upload flan/a.jsonl: data.paths[0] names the folder flan, of which this is only a part; "
              "upload flan itself")


def test_a_good_upload_goes_on_to_the_cluster_which_must_answer(submit, tmp_path, monkeypatch):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "my.model").write_bytes(b"m")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    code, _, err = submit("data.tokenizer=../tok/my.model", "--upload", "../tok/my.model")
    # Ray may log a warning of its own on the way; flanscale's error is still one line.
    (line,) = [ln for ln in err.splitlines() if ln.startswith("flanscale: error:")]
    assert code == 2 and "Traceback" not in err
    assert "--ray-address http://127.0.0.1:9: no Ray dashboard at 127.0.0.1:9 (Connection refused)" in line, err


def test_k8s_sends_the_composed_spec_in_its_configmap_and_nothing_else(tmp_path, monkeypatch):
    from orchestrator.commands.k8s import _documents

    monkeypatch.setenv("FLAN_DATA", "/datasets/flan")
    args = types.SimpleNamespace(spec=str(SWEEPS[1]), overrides=["accelerator=h100-80g", "eval=quick"], overlay=None,
                                 namespace="flanscale", image="", name="", backoff_limit=2, home_pvc="", data_pvc="",
                                 upload=[], retry_failed=False, register_models=False,
                                 skip_infeasible=False)
    planned = load_spec(SWEEPS[1], args.overrides)
    (configmap,) = [d for d in _documents(args) if d["kind"] == "ConfigMap"]
    assert list(configmap["data"]) == ["sweep.yaml"] and "binaryData" not in configmap
    (tmp_path / "sweep.yaml").write_text(configmap["data"]["sweep.yaml"])
    monkeypatch.setattr("orchestrator.compose.SHARED_GROUPS", tmp_path / "no-groups-here")
    monkeypatch.delenv("FLAN_DATA")
    shipped = load_spec(tmp_path / "sweep.yaml")
    assert shipped == dataclasses.replace(planned, tracking_uri=shipped.tracking_uri)
    assert shipped.data.paths == ("/datasets/flan",)


def test_fill_working_dir_rejects_a_fifo(tmp_path):
    (tmp_path / "up").mkdir()
    os.mkfifo(tmp_path / "up" / "pipe")
    wd = tmp_path / "wd"
    wd.mkdir()
    with pytest.raises(UserError, match=r"pipe is not a regular file"):
        sweep_cmd.fill_working_dir(wd, load_spec(SWEEPS[0]), [str(tmp_path / "up")], MiB)
