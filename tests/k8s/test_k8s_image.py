"""The flanscale image: requirements derived from pyproject.toml per accelerator, and a
Dockerfile whose build context, user and variants agree with the manifests."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from orchestrator import k8s_render

SCRIPT = REPO / "k8s" / "image" / "requirements.py"


def _requirements(accelerator: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(REPO / "pyproject.toml"), accelerator],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("accelerator,jax", [("cuda", "jax[cuda12]"), ("tpu", "jax[tpu]"), ("cpu", "jax[cpu]")])
def test_image_requirements_keep_every_pin_and_pick_the_jax_extra(accelerator, jax):
    out = _requirements(accelerator)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned_jax = next(d for d in deps if d.startswith("jax["))
    version = pinned_jax.split("==")[1]
    assert f"{jax}=={version}" in lines
    pinned_mlflow = next(d for d in deps if d.startswith("mlflow=="))
    assert f"mlflow[auth]=={pinned_mlflow.split('==')[1]}" in lines  # the server runs the basic-auth app
    assert set(deps) - {pinned_jax, pinned_mlflow} <= set(lines)
    assert all("==" in line for line in lines)
    assert any(line.startswith("psycopg2-binary==") for line in lines)  # MLflow on PostgreSQL


def test_image_requirements_refuse_unknown_accelerators():
    out = _requirements("rocm")
    assert out.returncode != 0 and "allowed: cuda, tpu, cpu" in out.stderr


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; '!' re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(p, pat) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_only_what_the_context_sends():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for line in _dockerfile().splitlines():
        m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line.strip())
        if m:
            sources += m.group(1).split()
    assert "pyproject.toml" in sources and "orchestrator" in sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    assert _ignored(".venv/bin/python", patterns) and _ignored("tests/k8s/conftest.py", patterns)


def test_dockerfile_variants_and_user_match_the_manifests():
    text = _dockerfile()
    assert re.search(r"^ARG ACCELERATOR=cuda$", text, re.M)
    assert 'requirements.py pyproject.toml "${ACCELERATOR}"' in text
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    assert user == [(str(k8s_render.RUN_AS), str(k8s_render.RUN_AS))]
    assert k8s_render.RUN_AS != 0
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert base.startswith("python:3.11") and not base.endswith(":latest")
    # The overlays' image tags are the Dockerfile's variants.
    assert set(k8s_render.IMAGE_VARIANT.values()) == {"cuda", "tpu", "cpu"}
    for overlay, variant in k8s_render.IMAGE_VARIANT.items():
        kustomization = (REPO / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
        assert re.search(rf"newTag: \S+-{variant}$", kustomization, re.M), overlay
