"""One resolution of the home directory and the default MLflow store for every entry point."""

from trainers.home import flanscale_home, tracking_uri


def test_home_explicit_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLANSCALE_HOME", raising=False)
    assert flanscale_home() == tmp_path / ".flanscale"
    assert not (tmp_path / ".flanscale").exists()  # resolving never creates it
    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "env"))
    assert flanscale_home() == tmp_path / "env"
    assert flanscale_home(tmp_path / "arg") == tmp_path / "arg"


def test_tracking_uri_explicit_then_environment_then_sqlite_in_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(home=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(home=tmp_path) == "http://mlflow:5000"
    assert tracking_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"
