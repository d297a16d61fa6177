"""Plans learn from measured runs: the median `train/mfu` of finished cells of the same family
and accelerator in the tracking store sets hours and cost; `mfu` in the spec still wins."""

from __future__ import annotations

import pytest

from orchestrator.measured import DEFAULT_MFU, planning_mfu
from orchestrator.planner import plan
from orchestrator.spec import load_spec

pytestmark = pytest.mark.slow  # a new MLflow store takes seconds to create

SPEC = "name: {name}\nmodels: [tiny-1]\ntask_counts: {tasks}\naccelerator: cpu\noptim:\n  steps: 10\n"


@pytest.fixture(scope="module")
def store_home(tmp_path_factory):
    """A real MLflow store holding an earlier sweep: three finished t5 cells (MFU 0.01, 0.03,
    0.02), one still running (0.9) and two finished cells tagged as decoders (0.1, 0.2)."""
    from orchestrator.store import SweepStore

    root = tmp_path_factory.mktemp("measured")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLANSCALE_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        (root / "old.yaml").write_text(SPEC.format(name="old", tasks="[9, 89, 282, 1836]").replace(
            "models: [tiny-1]", "models: [tiny-1, tiny-2]"))
        store = SweepStore()
        cells = [c for c in plan(load_spec(str(root / "old.yaml"), [])) if c.steps]
        plan_of = [("t5", "finished", 0.01), ("t5", "finished", 0.03), ("t5", "finished", 0.02),
                   ("t5", "running", 0.9), ("decoder", "finished", 0.1), ("decoder", "finished", 0.2)]
        assert len(cells) >= len(plan_of)
        for cell, (family, state, mfu) in zip(cells, plan_of):
            run_id, _ = store.cell_run("old", cell)
            store.client.log_metric(run_id, "train/mfu", mfu, step=10)
            store.set_state(run_id, state)
            store.set_tags(run_id, {"family": family})
    return root


@pytest.fixture()
def new_sweep(store_home, monkeypatch):
    monkeypatch.setenv("FLANSCALE_HOME", str(store_home / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = store_home / "new.yaml"
    path.write_text(SPEC.format(name="new", tasks="[9]"))
    return path


def test_the_median_of_finished_cells_sets_hours_and_cost(new_sweep, cli_runner):
    spec = load_spec(str(new_sweep), [])
    mfu = planning_mfu(spec, "t5", "cpu")
    assert (mfu.value, mfu.source, mfu.cells) == (0.02, "measured", 3)  # the running cell does not count
    assert planning_mfu(spec, "decoder", "cpu").value == pytest.approx(0.15)  # nor another family's
    assert planning_mfu(spec, "t5", "tpu-v4").source == "assumed"  # nor another accelerator's
    assert planning_mfu(spec, "t5", "tpu-v4").value == DEFAULT_MFU
    measured = plan(spec)[0]
    given = plan(load_spec(str(new_sweep), ["mfu=0.4"]))[0]  # the spec's mfu wins
    assert measured.est_hours == pytest.approx(given.est_hours * 0.4 / 0.02)
    assert measured.est_cost == pytest.approx(given.est_cost * 0.4 / 0.02)
    code, out, err = cli_runner("plan")("plan", str(new_sweep))
    assert code == 0, err
    assert "MFU 0.02 measured: median of 3 finished t5 cells on cpu" in " ".join(out.split())
    code, out, _ = cli_runner("plan")("plan", str(new_sweep), "mfu=0.3")
    assert "MFU 0.3 from the spec (mfu)" in " ".join(out.split())


def test_no_store_is_the_assumed_mfu_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(SPEC.format(name="s", tasks="[9]"))
    spec = load_spec(str(tmp_path / "s.yaml"), [])
    assert planning_mfu(spec, "t5", "cpu") == planning_mfu(spec, "t5", "cpu")
    assert planning_mfu(spec, "t5", "cpu").source == "assumed"
    assert not (tmp_path / "home").exists()
