"""Print the pinned requirements of the flanscale image for one accelerator.

The pins come from pyproject.toml (the single source of truth); only the JAX extra changes
with the accelerator, plus the packages the MLflow server of the same image needs
(PostgreSQL driver and object-storage clients for proxied artifacts).

    python k8s/image/requirements.py pyproject.toml cuda > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

# jax[<extra>] per image variant; "cpu" keeps pyproject's own jax[cpu].
JAX_EXTRAS = {"cuda": "cuda12", "tpu": "tpu", "cpu": "cpu"}

# Used only by `mlflow server` inside the cluster (not by the library), so not in pyproject:
# the basic-auth app's CSRF protection (mlflow's "auth" extra), the PostgreSQL driver and
# the GCS client for proxied artifacts. (boto3, for s3:// artifacts, cannot be installed
# next to the pinned kubernetes client: botocore wants python-dateutil<3, kubernetes >=3.)
SERVER_PACKAGES = ("Flask-WTF==1.3.0", "psycopg2-binary==2.9.13", "google-cloud-storage==3.17.1")

_JAX = re.compile(r"^jax(\[[^\]]*\])?(?P<pin>==\S+)$")
_MLFLOW = re.compile(r"^mlflow(\[[^\]]*\])?(?P<pin>==\S+)$")


def requirements(pyproject: dict, accelerator: str) -> list[str]:
    if accelerator not in JAX_EXTRAS:
        raise SystemExit(f"accelerator: unknown {accelerator!r}; allowed: {', '.join(JAX_EXTRAS)}")
    out = []
    found_jax = False
    for req in pyproject["project"]["dependencies"]:
        m = _JAX.match(req.replace(" ", ""))
        if m:
            found_jax = True
            req = f"jax[{JAX_EXTRAS[accelerator]}]{m.group('pin')}"
        m = _MLFLOW.match(req.replace(" ", ""))
        if m:
            req = f"mlflow[auth]{m.group('pin')}"
        out.append(req)
    if not found_jax:
        raise SystemExit("pyproject.toml: no pinned jax dependency (expected jax[...]==VERSION)")
    return out + list(SERVER_PACKAGES)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: requirements.py PYPROJECT cuda|tpu|cpu")
    with open(argv[0], "rb") as f:
        pyproject = tomllib.load(f)
    print("\n".join(requirements(pyproject, argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
