"""Fixtures every test folder may use."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config):
    """Tests never read or write the user's stores: a checkout's own ./.flanscale (where `make
    demo` leaves finished cells, whose measured MFU plans would use) or a tracking server in
    the environment. Tests that need a home set their own."""
    os.environ["FLANSCALE_HOME"] = tempfile.mkdtemp(prefix="flanscale-tests-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture
def cli_runner(monkeypatch, capsys):
    """`cli_runner("plan")` -> run(*argv) -> (exit code, stdout, stderr): cli.main with only
    the named command groups registered (the others are not what the test is about)."""
    from orchestrator import cli

    def make(*modules: str):
        monkeypatch.setattr(cli, "COMMAND_MODULES", modules)

        def run(*argv: str):
            code = cli.main(list(argv))
            out = capsys.readouterr()
            return code, out.out, out.err

        return run

    return make


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """FLANSCALE_HOME set to a folder that does not exist yet (and the default store, no
    MLFLOW_TRACKING_URI): a test can assert that a command created nothing there."""
    h = tmp_path / "home"
    monkeypatch.setenv("FLANSCALE_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


@pytest.fixture
def register_family(monkeypatch):
    """`register_family(family)` -> the model family registry with `family` added, for this
    test only (trainers.families.FAMILIES is swapped for a copy)."""
    from trainers import families

    def register(family):
        registry = families.FamilyRegistry(tuple(families.FAMILIES))
        registry.register(family)
        monkeypatch.setattr(families, "FAMILIES", registry)
        return registry

    return register


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process as soon as pytest is done with it, with pytest's own exit status.
    After a full run the interpreter's teardown can crash (SIGSEGV after the summary was
    printed) in the native threads that JAX, Ray and MLflow leave in this process; nothing
    the tests check happens in that teardown."""
    import os
    import sys

    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
