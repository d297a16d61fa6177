"""What `flanscale sweep run` prints: flanscale's own progress and results.

Libraries announce routine work at INFO: MLflow its database setup and, in every cell, the
start of its system-metrics monitor; Ray its local start and its token authentication. In a
sweep of many cells these lines outnumber flanscale's, so they are silenced unless the user
asks for them (`--verbose`). Warnings and errors still show. The MLflow setting travels as an
environment variable, which the Ray workers a local sweep starts inherit.
"""

from __future__ import annotations

import logging
import os

# Read by MLflow when it is imported, in this process and in every cell's worker.
MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"
# Ray's notice that token authentication is on is a WARNING about a default, not a problem.
_RAY_NOTICES = ("ray._private.authentication.authentication_token_setup",)


_ray_level = logging.INFO


def ray_level() -> int:
    """The level Ray's logger gets when it starts (ray.init sets its own otherwise)."""
    return _ray_level


def quiet() -> None:
    """Silence the libraries' routine INFO lines (call before Ray starts). Ray configures its
    loggers when it is imported, so it is imported here first and its levels set after."""
    global _ray_level
    os.environ.setdefault(MLFLOW_LEVEL_ENV, "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import ray  # noqa: F401  (configures its loggers)

    _ray_level = logging.WARNING
    logging.getLogger("ray").setLevel(logging.WARNING)
    for name in _RAY_NOTICES:
        logging.getLogger(name).setLevel(logging.ERROR)
