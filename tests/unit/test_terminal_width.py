"""Tables fit an 80-column terminal by leaving columns out, never by cutting values to "…";
--wide shows every column whole."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import cli
from orchestrator.progress import CellRow, render_table, summary_line
from orchestrator.termtable import wide_console

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "sweeps" / "demo.yaml")
ELLIPSIS = "…"


def _rows() -> list[CellRow]:
    states = ["finished", "running", "preempted", "pending", "failed", "infeasible"]
    rows = [CellRow(f"k{i}", f"tiny-{i % 3 + 1} · {[0, 9, 89, 282][i % 4]} tasks · mixed · seed {i % 2}", s,
                    2000 if s == "finished" else 37 * i, 2000, 2.3456 if i else None, i % 3,
                    f"{i:x}" * 32, 0.5)
            for i, s in enumerate(states)]
    rows[4] = CellRow(rows[4].key, rows[4].name, "failed", 12, 2000, 4.1, 2, "f" * 32, None,
                      "RuntimeError: shard 89 of the flan collection is unreadable after " + "x" * 120)
    return rows


def _render(renderable, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("width", [80, 100, 60])
def test_progress_table_fits_without_cutting_values(width):
    rows = _rows()
    table = render_table("sweep demo (running)", rows, summary_line(rows, 2))
    text = _render(table, width)
    assert ELLIPSIS not in text
    assert all(len(line) <= width for line in text.splitlines()), text
    for r in rows:  # the values that are shown are whole
        assert f"{r.step}/{r.total_steps}" in text
    if width >= 80:
        assert all(r.name in text for r in rows) and "step" in table.shown
    # The failed cell's error follows the table, wrapped, not cut.
    assert "x" * 40 in text.replace("\n", "")


def test_progress_table_drops_run_id_first_and_keeps_everything_when_wide():
    rows = _rows()
    table = render_table("t", rows)
    _render(table, 80)
    assert "run id" not in table.shown and {"cell", "state", "step"} <= set(table.shown)
    _render(table, 200)
    assert table.shown == ["cell", "state", "step", "loss", "attempts", "run id"]

    wide = render_table("t", rows, wide=True)
    out = io.StringIO()
    wide_console(wide, file=out, width=80, color_system=None).print(wide)
    text = out.getvalue()
    assert ELLIPSIS not in text and all(r.run_id in text for r in rows)
    assert "attempts" in text and wide.shown == ["cell", "state", "step", "loss", "attempts", "run id"]


def test_an_80_column_progress_table_keeps_step_and_attempts_whole():
    """The live view's rows (short names): at 80 columns nothing is cut, attempts included."""
    rows = [CellRow(f"k{i}", f"tiny-{i}/89t/mixed", "running", 100, 100, 1.25, 1, "a" * 32) for i in range(3)]
    table = render_table("sweep demo", rows, "0/3 cells done, 3 running, about 1m05s left")
    text = _render(table, 80)
    assert ELLIPSIS not in text and "100/100" in text
    assert "attempts" in text or "tries" in text


@pytest.fixture
def flanscale(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("plan",))

    def run(*argv: str, columns: int = 80) -> str:
        monkeypatch.setenv("COLUMNS", str(columns))
        assert cli.main(list(argv)) == 0
        return capsys.readouterr().out

    return run


def test_plan_table_fits_80_columns_and_wide_shows_every_column(flanscale):
    argv = ("plan", DEMO, "models=[tiny-1,palm-540b]", "task_counts=[9,89]", "seeds=[0]")
    text = flanscale(*argv)
    table = text.split("infeasible [")[0]
    assert ELLIPSIS not in text
    assert all(len(line) <= 80 for line in table.splitlines()), table
    for needle in ("key", "model", "tasks", "formats", "cost", "ok", "total", "2/4", "palm-540b", "tiny-1"):
        assert needle in table, needle
    assert "micro" not in table  # layout details go first
    assert "infeasible [1] palm-540b" in text

    wide = flanscale(*argv, "--wide")
    assert ELLIPSIS not in wide
    for header in ("#", "ft tokens", "ft FLOPs", "pt FLOPs", "ft/pt", "hosts", "mesh d/f/t", "micro", "GiB/dev",
                   "est h", "dev-h", "cost"):
        assert header in wide, header
    assert max(len(line) for line in wide.split("infeasible [")[0].splitlines()) > 80
