"""Any checkpoint evaluates: an interrupted cell's checkpoint directory, its key (found under the
home or, with --sweep, in MLflow, also when the directory predates cell.json), its Hugging Face
export and its flanscale export all give the same scores, because they hold the same weights.
A finished cell's export is registered in the MLflow model registry."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_sweep

from orchestrator import cli
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import SweepStore

pytestmark = pytest.mark.slow

SWEEP = "evalckpt"
SPEC = tiny_sweep(SWEEP, task_counts="[9]", steps=6)
EVAL = ["--benchmark", "mmlu", "--max-examples", "1", "--max-new-tokens", "4", "--max-prompt-tokens", "256",
        "--format", "json"]


class _StopAfter:
    """should_stop that asks the job to stop (checkpoint and return) after `n` steps."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A tiny T5 cell stopped after 2 of its 6 steps (as a preempted cell is), with its MLflow run."""
    from trainers.job import run_cell

    root = tmp_path_factory.mktemp("evalckpt")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLANSCALE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        (root / "sweep.yaml").write_text(SPEC)
        spec = load_spec(str(root / "sweep.yaml"), ["eval=none"])
        cell = plan(spec)[0]
        store = SweepStore(home=home)
        run_id, _ = store.cell_run(SWEEP, cell)
        result = run_cell(cell.spec.to_dict(), run_id, store.tracking_uri, home=home, should_stop=_StopAfter(2))
        assert result["status"] == "preempted" and result["steps"] == 2
        yield {"home": home, "root": root, "cell": cell, "run_id": run_id, "store": store}


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _scores(argv, capsys):
    """The scores and the model's outputs (which a score of 0 everywhere would not tell apart)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        preds = Path(tmp) / "p.jsonl"
        scores = json.loads(_run(["eval", "--checkpoint", *argv, *EVAL, "--predictions-out", str(preds)], capsys))
        return scores["scores"], preds.read_text()


def test_every_form_of_a_checkpoint_evaluates_to_the_same_scores(interrupted, capsys, monkeypatch):
    monkeypatch.setenv("FLANSCALE_HOME", str(interrupted["home"]))
    key, root = interrupted["cell"].key, interrupted["root"]
    directory = interrupted["home"] / "checkpoints" / key
    assert (directory / "cell.json").is_file() and (directory / "2").is_dir()

    reference = _scores([str(directory)], capsys)
    assert reference[0][0]["benchmark"] == "mmlu" and reference[1].count("prediction") >= 2
    assert _scores([key[:6]], capsys) == reference  # a key prefix, found under the home's checkpoints

    out = _run(["export", key, "--sweep", SWEEP, "--out", str(root / "hf")], capsys)
    assert f"cell {key} at step 2" in out and "Hugging Face T5" in out
    assert _scores([str(root / "hf")], capsys) == reference

    _run(["export", str(directory), "--format", "flanscale", "--out", str(root / "own")], capsys)
    assert (root / "own" / "model.json").is_file()
    assert _scores([str(root / "own")], capsys) == reference

    # A checkpoint written before cells recorded their spec beside it: the spec comes from MLflow.
    saved = root / "cell.json"
    shutil.move(directory / "cell.json", saved)
    try:
        assert _scores([key, "--sweep", SWEEP], capsys) == reference
        assert _scores([str(directory)], capsys) == reference
    finally:
        shutil.move(saved, directory / "cell.json")


def test_unknown_cells_and_sweeps_are_one_line_errors(interrupted, capsys, monkeypatch):
    monkeypatch.setenv("FLANSCALE_HOME", str(interrupted["home"]))
    key = interrupted["cell"].key
    for argv, needle in [
        (["--checkpoint", "0" * 12, "--sweep", SWEEP], f"is neither a directory nor a cell of sweep '{SWEEP}'"),
        (["--checkpoint", key, "--sweep", "nosuch"], "no sweep 'nosuch'"),
        (["--checkpoint", "0" * 12], "nor the key of a cell with checkpoints"),
    ]:
        code = cli.main(["eval", *argv, *EVAL])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert key in err or "--sweep" in err


def test_a_finished_cells_model_is_registered_with_its_export(interrupted, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator import model_registry

    monkeypatch.setenv("FLANSCALE_HOME", str(interrupted["home"]))
    cell, run_id, store = interrupted["cell"], interrupted["run_id"], interrupted["store"]
    name = model_registry.registered_model_name(SWEEP, cell.model)
    registered = model_registry.register_cell(cell.spec.to_dict(), run_id, store.tracking_uri, interrupted["home"])
    assert registered == f"{name}/1"
    client = MlflowClient(store.tracking_uri)
    version = client.get_model_version(name, "1")
    assert version.run_id == run_id and version.tags["flanscale.cell_key"] == cell.key
    assert version.tags["format"] == "hf" and version.tags["task_count"] == "9" and version.tags["step"] == "2"
    files = {f.path for f in client.list_artifacts(run_id, "model/artifacts/model")}
    assert {f"model/artifacts/model/{f}" for f in ("config.json", "model.safetensors", "tokenizer_config.json")} <= files
    # Registering again (a retried attempt) adds no second version.
    assert model_registry.register_cell(cell.spec.to_dict(), run_id, store.tracking_uri, interrupted["home"]) == registered
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # MLflow's own loader serves it: greedy answers of the checkpoint, as `flanscale eval` decodes them.
    import mlflow

    from trainers.data.tokenizer import load_tokenizer
    from trainers.eval.decoding import TextGenerator
    from trainers.export import load

    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    finally:
        mlflow.set_tracking_uri(None)
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None
    prompts = ["Question: what is 2 + 3?\nAnswer:", "Translate to German: good morning"]
    answers = model.predict(prompts)
    loaded = load(interrupted["home"] / "checkpoints" / cell.key)
    tokenizer = load_tokenizer(loaded.data, interrupted["home"], vocab_size=loaded.model.vocab_size)
    expected = TextGenerator(loaded.model, loaded.params, tokenizer, max_new_tokens=64)(prompts)
    assert answers == [e[0] for e in expected] and all(isinstance(a, str) for a in answers)


def test_a_rerun_registers_the_finished_cells_not_yet_registered(interrupted, monkeypatch):
    """`sweep run --register-models` over cells that finished before: what has a version keeps
    it, what has none gets one, and the lines say which."""
    from mlflow.tracking import MlflowClient

    from orchestrator import model_registry

    monkeypatch.setenv("FLANSCALE_HOME", str(interrupted["home"]))
    cell, run_id, store = interrupted["cell"], interrupted["run_id"], interrupted["store"]
    name = model_registry.registered_model_name(SWEEP, cell.model)
    assert model_registry.register_finished(store, SWEEP, [cell])["registered"] == []  # not finished: left alone
    store.set_state(run_id, "finished")
    client = MlflowClient(store.tracking_uri)
    before = len(client.search_model_versions(f"name = '{name}'"))
    store.delete_tag(run_id, model_registry.TAG_REGISTERED)  # finished without --register-models
    done = model_registry.register_finished(store, SWEEP, [cell])
    assert done["registered"] == [f"{name}/{before + 1}"] and not done["failed"]
    assert model_registry.describe(done) == [f"registered 1 model version(s): {name}/{before + 1}"]
    again = model_registry.register_finished(store, SWEEP, [cell])
    assert again["registered"] == [] and again["already"] == [f"{name}/{before + 1}"]
    assert model_registry.describe(again) == [f"already registered: {name}/{before + 1}"]
    assert len(client.search_model_versions(f"name = '{name}'")) == before + 1


@pytest.fixture()
def read_only_home(interrupted, tmp_path):
    """The home, with its live store, bind-mounted read-only: not writable even by root, which
    tests and CI run as and which ignores file modes."""
    import os
    import subprocess

    mount = tmp_path / "ro-home"
    mount.mkdir()
    made = subprocess.run(["mount", "--bind", str(interrupted["home"]), str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no read-only bind mount here (mount --bind needs CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True, text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount the bind mount read-only: {ro.stderr.strip()}")
        assert not os.access(mount / "mlflow.db", os.W_OK) and not os.access(mount, os.W_OK)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_home_serves_every_command_that_only_reads(interrupted, read_only_home, tmp_path, capsys,
                                                               monkeypatch):
    """status, eval --checkpoint, export and report --no-log on a home on a read-only mount."""
    monkeypatch.setenv("FLANSCALE_HOME", str(read_only_home))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    key = interrupted["cell"].key
    status = json.loads(_run(["sweep", "status", SWEEP, "--format", "json"], capsys))
    assert [c["key"] for c in status["cells"]] == [key]
    scores, _ = _scores([key, "--sweep", SWEEP], capsys)
    assert scores[0]["benchmark"] == "mmlu"
    out = _run(["export", key, "--sweep", SWEEP, "--out", str(tmp_path / "hf")], capsys)
    assert f"cell {key}" in out and (tmp_path / "hf" / "config.json").is_file()
    out = _run(["report", SWEEP, "--no-log", "--bootstrap", "0", "--out", str(tmp_path / "report")], capsys)
    assert (tmp_path / "report" / "report.html").is_file()
    # Logging the report writes: refused in one line, as any write to a store this user cannot write.
    code = cli.main(["report", SWEEP, "--bootstrap", "0", "--out", str(tmp_path / "report2")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not readable and writable" in err, err
