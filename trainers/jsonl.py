"""JSON-lines files: one object per line, streamed, blank lines skipped, errors as file:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO, Iterator

from trainers.spec import UserError


def open_text(path: Path) -> IO[str]:
    """A text file, gunzipped on the fly when its name ends in .gz."""
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def read_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object, or a
    file that cannot be read, raises UserError naming the file (and line)."""
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.pos + 1})") from None
                if not isinstance(rec, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
                yield lineno, rec
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
