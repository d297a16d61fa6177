"""Orbax checkpoints of a cell under <home>/checkpoints/<cell key>/, and resume.

A checkpoint holds two items: `state` (params, optimizer state, step, RNG key: the train
state pytree, sharded as it lives on the devices) and `meta` (JSON: the data iterator's
state and the run's token counters). Restoring both lets an interrupted run end bitwise
identical to one that never stopped.

Orbax writes each step atomically (a temporary directory renamed when complete), which
covers crashes during a save; it does not cover a checkpoint damaged afterwards (a file
truncated or deleted by a full disk, a partial copy or sync). So after each save we record
a manifest of the step's files and sizes, check it before restoring, and fall back to the
previous checkpoint, with a warning, when the latest is damaged or fails to restore.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifests"


def checkpoint_dir(home: str | os.PathLike, key: str) -> Path:
    return Path(home).absolute() / "checkpoints" / key


class Checkpointer:
    """Saves and restores one cell's train state; keeps the newest `keep` checkpoints.

    `create=False` opens an existing directory for reading (evaluation, export) and never
    creates one where a user mistyped a path.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, create: bool = True) -> None:
        self.directory = Path(directory).absolute()
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(int(keep), 1)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            create=create,
            # Synchronous: a save is complete (and its manifest written) before training
            # continues or the process exits on preemption.
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            self._write_manifest(step)
            self._prune_manifests()

    def restore(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Newest intact checkpoint as (step, state, meta), or None when there is none.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: the state is
        restored straight into that layout (another mesh than the one that saved is fine).
        Damaged checkpoints newer than the one restored are deleted, so that the resumed
        run writes those steps afresh.
        """
        damaged: list[int] = []
        for step in reversed(self.steps()):
            problem = self._check_manifest(step)
            if problem is None:
                try:
                    restored = self.manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                        ),
                    )
                except Exception as e:  # orbax/tensorstore raise many types for damaged data
                    problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                else:
                    self._discard(damaged)
                    return step, restored["state"], dict(restored["meta"])
            log.warning(
                "checkpoint %s step %d is damaged (%s); falling back to the previous one",
                self.directory,
                step,
                problem,
            )
            damaged.append(step)
        self._discard(damaged)
        return None

    def restore_params(self, abstract_params: Any) -> tuple[int, Any] | None:
        """The params of the newest intact checkpoint as (step, params), or None when none is.

        Only the params are read (not the optimizer state, RNG or data state), into the
        layout of `abstract_params` (ShapeDtypeStructs with shardings). A reader does not own
        the directory, so a damaged step is skipped with a warning, never deleted.
        """
        target = {"params": abstract_params}
        for step in reversed(self.steps()):
            problem = self._check_manifest(step)
            if problem is None:
                try:
                    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                        partial_restore=True)))
                except Exception as e:  # orbax/tensorstore raise many types for damaged data
                    problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                else:
                    return step, restored["state"]["params"]
            log.warning("checkpoint %s step %d is unreadable (%s); trying the previous one",
                        self.directory, step, problem)
        return None

    def _discard(self, steps: list[int]) -> None:
        for step in steps:
            self.manager.delete(step)
            if jax.process_index() == 0:
                self._manifest_path(step).unlink(missing_ok=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # Manifests live beside the step directories (orbax ignores non-step entries) so
    # that deleting or damaging a step directory cannot take its manifest with it.
    def _manifest_path(self, step: int) -> Path:
        return self.directory / MANIFEST_DIR / f"{step}.json"

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _write_manifest(self, step: int) -> None:
        root = self._step_dir(step)
        files = {
            str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
        }
        path = self._manifest_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "files": files}, indent=0, sort_keys=True))
        tmp.replace(path)

    def _check_manifest(self, step: int) -> str | None:
        path = self._manifest_path(step)
        if not path.exists():
            # Written by a run that died between orbax's commit and the manifest, or by
            # another tool: trust orbax's atomic commit and let the restore decide.
            return None
        files = json.loads(path.read_text())["files"]
        root = self._step_dir(step)
        for rel, size in files.items():
            p = root / rel
            if not p.is_file():
                return f"missing file {rel}"
            if p.stat().st_size != size:
                return f"file {rel} has {p.stat().st_size} bytes, expected {size}"
        return None

    def _prune_manifests(self) -> None:
        live = set(self.manager.all_steps())
        for p in (self.directory / MANIFEST_DIR).glob("*.json"):
            if p.stem.isdigit() and int(p.stem) not in live:
                p.unlink(missing_ok=True)
