"""Where flanscale keeps what it writes, and which MLflow store it uses by default.

Every entry point resolves these the same way (the README's "Home"): an explicit value,
then the environment (FLANSCALE_HOME, MLFLOW_TRACKING_URI), then the embedded defaults
(./.flanscale and a SQLite store inside it). Nothing here creates a directory: a caller
that writes does so itself, and a reader (a report) must not conjure an empty store.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".flanscale"


def flanscale_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The run-time directory: `home`, else $FLANSCALE_HOME, else ./.flanscale (absolute)."""
    return Path(home or os.environ.get("FLANSCALE_HOME") or DEFAULT_HOME).expanduser().resolve()


def tracking_uri(explicit: str | None = None, home: str | os.PathLike[str] | None = None) -> str:
    """`explicit`, else $MLFLOW_TRACKING_URI, else the SQLite store in the home directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{flanscale_home(home) / 'mlflow.db'}"
