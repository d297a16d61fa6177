"""The lock files `make` installs from hold exactly the versions pyproject.toml pins."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^;\s]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        m = PIN.match(line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def _pins(deps: list[str]) -> dict[str, str]:
    return {_norm(m.group(1)): m.group(2) for d in deps if (m := PIN.match(d.replace(" ", "")))}


def test_locks_hold_the_pinned_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, test = _lock("runtime.lock"), _lock("test.lock")
    for name, version in _pins(project["dependencies"]).items():
        assert runtime.get(name) == version, (name, version, runtime.get(name))
        assert test.get(name) == version, (name, version, test.get(name))
    for name, version in _pins(project["optional-dependencies"]["test"]).items():
        # A local version label (torch's "+cpu" build) still satisfies the pin.
        assert test.get(name, "").split("+")[0] == version, (name, version, test.get(name))
    assert set(runtime) <= set(test)  # the test install adds to the demo's, never changes it
    assert all(test[n] == v for n, v in runtime.items())
