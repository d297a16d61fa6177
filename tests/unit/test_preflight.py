"""Flags and inputs are checked before anything is written or scheduled: each bad value is
one line naming the flag or field, within the connect timeout, and nothing is created."""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import threading
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import preflight
from orchestrator.commands.sweep import refuse_infeasible
from orchestrator.spec import load_spec
from trainers.data import check
from trainers.spec import ModelConfig, UserError, to_dict

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sweeps" / "demo.yaml"
FLAN = ROOT / "tests" / "fixtures" / "flan"
EVAL = ROOT / "tests" / "fixtures" / "eval"


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def free_port() -> int:
    """A port nothing listens on (closed right after the kernel handed it out)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port whose server accepts connections and never says anything."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def http_server():
    """A local HTTP server answering every GET with the status set on it (records paths)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the base class's name)
            server.paths.append(self.path)
            self.send_response(server.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.paths = 200, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------- timeout


def test_connect_timeout_comes_from_the_flag_else_the_environment_else_the_default(monkeypatch):
    monkeypatch.delenv(preflight.TIMEOUT_ENV, raising=False)
    assert preflight.connect_timeout() == preflight.CONNECT_TIMEOUT_S == 30
    monkeypatch.setenv(preflight.TIMEOUT_ENV, "7.5")
    assert preflight.connect_timeout() == 7.5 and preflight.connect_timeout(2) == 2
    monkeypatch.setenv(preflight.TIMEOUT_ENV, "soon")
    assert "FLANSCALE_CONNECT_TIMEOUT: 'soon'" in refused(preflight.connect_timeout)
    for bad in (0, -1, float("nan"), float("inf")):
        assert "--connect-timeout" in refused(preflight.connect_timeout, bad)


# ------------------------------------------------------------------------- tracking URIs


def test_unknown_scheme_names_the_allowed_forms():
    msg = refused(preflight.check_tracking_uri, "bogus://x", "--tracking-uri", 5)
    assert msg.startswith("--tracking-uri bogus://x: unknown scheme 'bogus'") and "sqlite:///PATH" in msg


def test_a_closed_port_is_refused_at_once():
    t0 = time.monotonic()
    msg = refused(preflight.check_tracking_uri, f"http://127.0.0.1:{free_port()}", "--tracking-uri", 30)
    assert "no MLflow server" in msg and "Connection refused" in msg
    assert time.monotonic() - t0 < 5


def test_a_server_that_never_answers_is_given_up_on_after_the_timeout(silent_port):
    t0 = time.monotonic()
    msg = refused(preflight.check_tracking_uri, f"http://127.0.0.1:{silent_port}", "--tracking-uri", 1.0)
    assert "no answer within 1 s" in msg
    assert time.monotonic() - t0 < 4


def test_an_mlflow_server_passes_and_other_answers_say_what_is_wrong(http_server, monkeypatch):
    for name in ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    uri = f"http://127.0.0.1:{http_server.server_port}"
    preflight.check_tracking_uri(uri, "--tracking-uri", 5)
    assert http_server.paths[-1].startswith("/api/2.0/mlflow/experiments/search")
    for status, needle in ((404, "no MLflow tracking API there"), (401, "MLFLOW_TRACKING_USERNAME"),
                           (403, "refuses these credentials"), (503, "HTTP 503")):
        http_server.status = status
        assert needle in refused(preflight.check_tracking_uri, uri, "--tracking-uri", 5)


def test_local_stores_must_be_creatable_and_of_the_right_kind(tmp_path):
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello")
    assert "not an SQLite database" in refused(preflight.check_tracking_uri, f"sqlite:///{not_db}", "--tracking-uri", 5)
    assert "cannot create" in refused(preflight.check_tracking_uri, f"sqlite:///{not_db}/m.db", "--tracking-uri", 5)
    assert "is a folder" in refused(preflight.check_tracking_uri, f"sqlite:///{tmp_path}", "--tracking-uri", 5)
    assert "must be a folder" in refused(preflight.check_tracking_uri, f"file://{not_db}", "--tracking-uri", 5)
    fresh = tmp_path / "new" / "deeper" / "mlflow.db"
    preflight.check_tracking_uri(f"sqlite:///{fresh}", "--tracking-uri", 5)
    preflight.check_tracking_uri(str(tmp_path / "mlruns"), "--tracking-uri", 5)
    assert not (tmp_path / "new").exists() and not (tmp_path / "mlruns").exists()  # checks never write


def test_database_servers_must_accept_connections():
    msg = refused(preflight.check_tracking_uri, f"postgresql://u@127.0.0.1:{free_port()}/db", "--tracking-uri", 5)
    assert "no database server" in msg


# ------------------------------------------------------------------------- Ray addresses


@pytest.mark.parametrize("address,needle", [
    ("not a host", "not a host:port address"),
    ("127.0.0.1", "not a host:port address"),
    ("127.0.0.1:99999", "not a host:port address"),
    ("http://127.0.0.1:8265", "dashboard address"),
    ("no-such-host.invalid:6379", "cannot resolve host"),
])
def test_malformed_or_wrong_kind_of_ray_address(address, needle):
    msg = refused(preflight.check_ray_address, address, "--ray-address", preflight.RAY_GCS, 5)
    assert msg.startswith("--ray-address ") and needle in msg


def test_ray_addresses_that_do_not_answer_as_ray(silent_port):
    assert "Connection refused" in refused(preflight.check_ray_address, f"127.0.0.1:{free_port()}", "--ray-address",
                                           preflight.RAY_GCS, 5)
    t0 = time.monotonic()
    assert "within 1 s" in refused(preflight.check_ray_address, f"127.0.0.1:{silent_port}", "--ray-address",
                                   preflight.RAY_GCS, 1.0)
    assert time.monotonic() - t0 < 5
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(1))  # gRPC, but without Ray's services
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert "no Ray GCS answers there" in refused(preflight.check_ray_address, f"127.0.0.1:{port}", "--ray-address",
                                             preflight.RAY_GCS, 5)
    finally:
        server.stop(None)


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_ray_cluster_passes():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=128 * 2**20)
    try:
        gcs = ray.get_runtime_context().gcs_address
        preflight.check_ray_address(gcs, "--ray-address", preflight.RAY_GCS, 10)
        preflight.check_ray_address("auto", "--ray-address", preflight.RAY_GCS, 10)
    finally:
        ray.shutdown()


def test_dashboard_addresses(http_server):
    assert "no Ray dashboard" in refused(preflight.check_ray_address, f"http://127.0.0.1:{free_port()}",
                                         "--ray-address", preflight.RAY_DASHBOARD, 5)
    address = f"127.0.0.1:{http_server.server_port}"  # no scheme: http is meant
    preflight.check_ray_address(address, "--ray-address", preflight.RAY_DASHBOARD, 5)
    assert http_server.paths[-1] == "/api/version"
    http_server.status = 404
    assert "not a Ray dashboard" in refused(preflight.check_ray_address, address, "--ray-address",
                                            preflight.RAY_DASHBOARD, 5)


def test_check_flags_reads_the_environment_when_no_flag_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(preflight.TIMEOUT_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    args = argparse.Namespace(tracking_uri=None, ray_address=None)
    assert refused(preflight.check_flags, args).startswith("MLFLOW_TRACKING_URI bogus://x:")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    assert refused(preflight.check_flags, args).startswith("RAY_ADDRESS 127.0.0.1:")
    monkeypatch.delenv("RAY_ADDRESS")
    preflight.check_flags(args)  # the embedded defaults: a creatable SQLite file and a local Ray
    # A sweep file's store is used (and checked) where no flag names one.
    assert refused(preflight.check_flags, args, spec_tracking=("s.yaml: tracking_uri", "bogus://y")).startswith(
        "s.yaml: tracking_uri bogus://y: unknown scheme")
    assert not (tmp_path / "home").exists()
    # A submitted sweep's tracking server is reached from the cluster, not from here.
    preflight.check_flags(argparse.Namespace(tracking_uri="http://mlflow.cluster.invalid:5000",
                                             tracking_uri_checked_remotely=True))


def test_report_out_must_be_a_folder(tmp_path):
    f = tmp_path / "report.html"
    f.write_text("")
    assert refused(preflight.check_out_dir, f, "--out") == f"--out {f}: is a file; give a folder (created if missing)"
    preflight.check_out_dir(tmp_path / "new" / "reports", "--out")


# ------------------------------------------------------------------------- the sweep's inputs


def test_flan_exports_every_record(tmp_path):
    found = check.flan_exports((str(FLAN),))
    assert (found.files, found.records, len(found.tasks)) == (5, 56, 11)
    rec = {"inputs": "x", "targets": "y", "task_source": "Flan2021", "task_name": "t", "template_type": "zs_opt"}
    cases = {
        "missing.jsonl": (None, "does not exist"),
        "empty.jsonl": ("\n", "no records"),
        "garbled.jsonl": ("{not json\n", "not valid JSON"),
        "fields.jsonl": (json.dumps({"inputs": "x"}) + "\n", "field 'targets' missing"),
        "source.jsonl": (json.dumps({**rec, "task_source": "Bogus"}) + "\n", "task_source 'Bogus' unknown"),
        "template.jsonl": (json.dumps({**rec, "template_type": "zz"}) + "\n", "template_type 'zz' unknown"),
    }
    for name, (text, needle) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        msg = refused(check.flan_exports, (str(tmp_path / name),), "s.yaml: data.paths")
        assert msg.startswith("s.yaml: data.paths: ") and needle in msg and msg.count("data.paths") == 1, msg


def test_base_checkpoints(tmp_path):
    good = tmp_path / "base"
    (good / "params").mkdir(parents=True)
    (good / "params" / "manifest.ocdbt").write_bytes(b"x")
    (good / "model.json").write_text(json.dumps(to_dict(ModelConfig())))
    assert check.base_checkpoint(str(good)) == ModelConfig()
    assert "does not exist" in refused(check.base_checkpoint, str(tmp_path / "nope"))
    (tmp_path / "nomodel").mkdir()
    assert "has no model.json" in refused(check.base_checkpoint, str(tmp_path / "nomodel"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{oops")
    assert "invalid JSON" in refused(check.base_checkpoint, str(bad))
    (bad / "model.json").write_text(json.dumps({"d_modle": 3}))
    assert "not a model config" in refused(check.base_checkpoint, str(bad))
    (bad / "model.json").write_text(json.dumps(to_dict(ModelConfig())))
    assert "no params/ folder" in refused(check.base_checkpoint, str(bad), "init_checkpoint.tiny-1")


def test_eval_data(tmp_path):
    check.eval_data(("mmlu", "bbh", "tydiqa", "mgsm"), str(EVAL), "test")
    msg = refused(check.eval_data, ("mmlu",), str(tmp_path), "test", "s.yaml: eval.data_dir")
    assert msg.startswith("s.yaml: eval.data_dir: mmlu: ")


def test_check_inputs_walks_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    preflight.check_inputs(load_spec(DEMO, ["data=flan", f"data.paths=[{FLAN}]"]), "demo.yaml")
    spec = load_spec(DEMO, [f"+init_checkpoint.tiny-1={tmp_path / 'nope'}"])
    assert refused(preflight.check_inputs, spec, "demo.yaml").startswith("demo.yaml: init_checkpoint.tiny-1: ")
    spec = load_spec(DEMO, ["eval=quick", f"eval.data_dir={tmp_path}"])
    assert refused(preflight.check_inputs, spec, "demo.yaml").startswith("demo.yaml: eval.data_dir: ")
    garbled = tmp_path / "spiece.model"
    garbled.write_bytes(b"not a model")
    spec = load_spec(DEMO, [f"data.tokenizer={garbled}"])
    assert refused(preflight.check_inputs, spec, "demo.yaml") == (
        f"demo.yaml: data.tokenizer: {garbled}: not a valid SentencePiece model (RuntimeError)")


# ------------------------------------------------------------------------- spec values


@pytest.mark.parametrize("override,field", [
    ("optim.learning_rate=nan", "optim.learning_rate: nan"),
    ("optim.learning_rate=inf", "optim.learning_rate: inf"),
    ("model.dropout_rate=-inf", "model.dropout_rate: -inf"),
    ("eval.sc_temperature=nan", "eval.sc_temperature: nan"),
    ("+pretrain_tokens.tiny-1=nan", "pretrain_tokens.tiny-1: nan"),
])
def test_non_finite_numbers_are_refused(override, field):
    msg = refused(load_spec, DEMO, [override])
    assert msg == f"{DEMO}: {field} is not allowed; must be a finite number"


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing yet\n", "{}\n"])
def test_an_empty_spec_file_is_refused(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    assert "the sweep file is empty" in refused(load_spec, p)


# ------------------------------------------------------------------------- infeasible cells


def _cell(model: str, feasible: bool, reason: str = "") -> SimpleNamespace:
    return SimpleNamespace(model=model, task_count=9, formats="mixed", seed=0, feasible=feasible, reason=reason)


def test_infeasible_cells_stop_the_run_unless_skipped(capsys):
    spec = SimpleNamespace(name="s")
    big = [_cell("palm-540b", False, "does not fit"), _cell("palm-62b", False, "does not fit")]
    cells = [_cell("tiny-1", True), *big]
    assert refuse_infeasible(spec, cells, skip=False)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("flanscale: error: sweep s: 2 of 3 cells cannot run, nothing was started; "
                      "pass --skip-infeasible to run the other 1:")
    assert err[1:] == ["  palm-540b · 9 tasks · mixed · seed 0, palm-62b · 9 tasks · mixed · seed 0: does not fit"]
    assert not refuse_infeasible(spec, cells, skip=True)
    assert refuse_infeasible(spec, big, skip=True)  # nothing left to run
    assert not refuse_infeasible(spec, cells[:1], skip=False)
