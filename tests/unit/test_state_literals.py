"""A cell's states are spelled once, in trainers/states.py: code elsewhere names them.

The check parses every module of orchestrator/, dashboards/ and trainers/ and flags a string
constant equal to a state where code uses it as a state: compared, passed to a call (an
`Outcome(...)`, `set_state(...)`), returned, assigned, given as a default, or as a value (or
every key) of a dict literal. Docstrings, subscripts (`done["failed"]`), f-string text and
dict literals whose keys are other names (`{"registered": ..., "failed": ...}`) are not states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainers.states import LAPSED, CellState

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "dashboards", "trainers")
HOME = ROOT / "trainers" / "states.py"
STATES = frozenset({s.value for s in CellState} | {LAPSED})


def _is_state(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATES


def _leaves(node: ast.AST | None) -> list[ast.AST]:
    """The constants an expression may evaluate to: through tuples, lists, sets and `a if c else b`."""
    if node is None:
        return []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [leaf for e in node.elts for leaf in _leaves(e)]
    if isinstance(node, ast.IfExp):
        return _leaves(node.body) + _leaves(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [leaf for v in node.values for leaf in _leaves(v)]
    return [node]


def bare_states(source: str) -> list[tuple[int, str]]:
    """(line, literal) of each state spelled as a bare string where code uses it as a state."""
    found: list[ast.AST] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            found += _leaves(node.left) + [leaf for c in node.comparators for leaf in _leaves(c)]
        elif isinstance(node, ast.Call):
            found += [leaf for a in node.args for leaf in _leaves(a)]
            found += [leaf for k in node.keywords for leaf in _leaves(k.value)]
        elif isinstance(node, (ast.Return, ast.AnnAssign, ast.Assign, ast.AugAssign)):
            found += _leaves(node.value)
        elif isinstance(node, ast.arguments):
            found += [leaf for d in node.defaults + node.kw_defaults for leaf in _leaves(d)]
        elif isinstance(node, ast.Dict):
            found += [leaf for v in node.values for leaf in _leaves(v)]
            keys = [k for k in node.keys if k is not None]
            if keys and all(_is_state(k) for k in keys):  # a table keyed by state
                found += keys
    return sorted({(n.lineno, n.value) for n in found if _is_state(n)})


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p != HOME)


def test_no_bare_state_literals():
    offenders = [f"{p.relative_to(ROOT)}:{line}: {text!r}"
                 for p in _modules() for line, text in bare_states(p.read_text())]
    assert not offenders, "name the state (trainers.states.CellState / LAPSED) instead of:\n" + "\n".join(offenders)


@pytest.mark.parametrize("code", [
    'if r.state == "finished": pass',
    'x = [c for c in cells if c.state in ("finished", "running")]',
    'Outcome("failed", "why")',
    'Outcome("cancelled" if stop else "preempted", "why")',
    'store.set_state(run_id, "pending")',
    'tags = {TAG_STATE: "pending"}',
    'def f(states=("finished",)): pass',
    'def f(): return "lapsed"',
    'style = {"finished": "green", "running": "cyan"}',
    'status = result.get("status", "finished")',
])
def test_flags_a_bare_state(code):
    assert bare_states(code), code


@pytest.mark.parametrize("code", [
    'def f():\n    """Returns "finished" or "preempted"."""',
    'done = {"registered": [], "already": [], "failed": [], "nothing": []}\ndone["failed"].append(1)',
    'cache = {"cache": c, "pos": p, "pending": t}\nx = state["pending"]',
    'msg = f"no finished cell ({state})"',
    'if r.state == CellState.FINISHED: pass',
])
def test_leaves_other_strings_alone(code):
    assert not bare_states(code), code


def test_states_keep_the_stored_tag_values():
    """The tag values runs already carry: renaming a member must not change what is stored."""
    assert [s.value for s in CellState] == ["pending", "running", "finished", "failed", "preempted",
                                            "cancelled", "infeasible"]
    assert LAPSED == "lapsed" and CellState.FINISHED == "finished" and f"{CellState.FAILED}" == "failed"
