"""Fixtures every test folder may use."""

from __future__ import annotations

import pytest


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
