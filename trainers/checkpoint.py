"""Orbax checkpoints of a cell under <home>/checkpoints/<cell key>/, and resume.

A checkpoint holds two items: `state` (params, optimizer state, step, RNG key: the train
state pytree, sharded as it lives on the devices) and `meta` (JSON: the data iterator's
state and the run's token counters). Restoring both lets an interrupted run end bitwise
identical to one that never stopped.

Saves are asynchronous: `save` returns once the arrays are copied off the devices and
orbax writes them on a background thread while training goes on. At most one save is in
flight (orbax waits for the previous one before starting the next); the final save of a
run, and the save on a stop request, wait until the checkpoint is on disk.

Orbax writes each step atomically (a temporary directory renamed when complete), which
covers crashes during a save; it does not cover a checkpoint damaged afterwards (a file
truncated or deleted by a full disk, a partial copy or sync). So once a step is committed
we record a manifest of its files and sizes, check it before restoring, and fall back to
the previous checkpoint, with a warning naming the damaged file, when anything about the
latest is wrong (manifest unreadable, a file missing or short, orbax failing to read it).

Checkpoints may hold a user's finetuned weights: the directory is created readable by its
owner only (0o700), and every file in it is made owner-only (0o600) once written.
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
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


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
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            self.directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            self.directory.chmod(PRIVATE_DIR)
        self.keep = max(int(keep), 1)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            create=create,
            enable_async_checkpointing=True,
            file_options=ocp.options.FileOptions(path_permission_mode=PRIVATE_DIR),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        # Steps saved by this process whose commit has not been recorded in a manifest yet.
        self._unrecorded: list[int] = []

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any], *, final: bool = False) -> None:
        """Starts saving `state` at `step`; with `final`, returns only once it is on disk.

        The state's arrays are copied to host memory before this returns, so the caller
        may donate or overwrite them at once.
        """
        if step not in self.manager.all_steps():
            # orbax would wait for the previous save here anyway: record its manifest first.
            self.wait()
            # `meta` is serialized later, on orbax's thread: save a copy the caller cannot change.
            meta = json.loads(json.dumps(meta))
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            self._unrecorded.append(step)
        if final:
            self.wait()

    def poll(self) -> None:
        """Records a finished background save without waiting for one in progress."""
        if self._unrecorded and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Waits for the save in flight, then writes the manifests of committed steps."""
        self.manager.wait_until_finished()
        if not self._unrecorded:
            return
        live = set(self.manager.all_steps())
        if jax.process_index() == 0:
            for step in self._unrecorded:
                if step in live:
                    self._write_manifest(step)
            self._prune_manifests(live)
            self._make_private()
        self._unrecorded.clear()

    def restore(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Newest intact checkpoint as (step, state, meta), or None when there is none.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: the state is
        restored straight into that layout (another mesh than the one that saved is fine).
        Damaged checkpoints newer than the one restored are deleted, so that the resumed
        run writes those steps afresh; when every checkpoint is damaged, all are deleted
        and the warning says that the run starts over from step 0.
        """
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        damaged: list[int] = []
        for step in reversed(self.steps()):
            restored, problem = self._read(step, args)
            if problem is None:
                self._discard(damaged)
                return step, restored["state"], dict(restored["meta"])
            log.warning("checkpoint %s step %d is damaged (%s); falling back to the previous one",
                        self.directory, step, problem)
            damaged.append(step)
        if damaged:
            log.warning("checkpoint %s: every checkpoint (steps %s) is damaged; the cell starts over from step 0",
                        self.directory, ", ".join(map(str, sorted(damaged))))
        self._discard(damaged)
        return None

    def restore_params(self, abstract_params: Any) -> tuple[int, Any] | None:
        """The params of the newest intact checkpoint as (step, params), or None when none is.

        Only the params are read (not the optimizer state, RNG or data state), into the
        layout of `abstract_params` (ShapeDtypeStructs with shardings). A reader does not own
        the directory, so a damaged step is skipped with a warning, never deleted.
        """
        target = {"params": abstract_params}
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
        for step in reversed(self.steps()):
            restored, problem = self._read(step, args)
            if problem is None:
                return step, restored["state"]["params"]
            log.warning("checkpoint %s step %d is unreadable (%s); trying the previous one",
                        self.directory, step, problem)
        return None

    def _read(self, step: int, args: Any) -> tuple[Any, str | None]:
        """(what orbax restored, None), or (None, what is wrong, naming the file)."""
        problem = self._check_manifest(step)
        if problem is not None:
            return None, problem
        try:
            return self.manager.restore(step, args=args), None
        except Exception as e:  # orbax/tensorstore raise many types for damaged data
            first = str(e).splitlines()[0] if str(e) else ""
            return None, f"reading {self._step_dir(step)} failed: {type(e).__name__}: {first}"

    def _discard(self, steps: list[int]) -> None:
        for step in steps:
            self.manager.delete(step)
            if jax.process_index() == 0:
                self._manifest_path(step).unlink(missing_ok=True)

    def close(self) -> None:
        self.wait()
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
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "files": files}, indent=0, sort_keys=True))
        tmp.replace(path)

    def _check_manifest(self, step: int) -> str | None:
        path = self._manifest_path(step)
        if not path.exists():
            # Written by a run that died between orbax's commit and the manifest, or by
            # another tool: trust orbax's atomic commit and let the restore decide.
            return None
        try:
            files = json.loads(path.read_text())["files"]
            expected = [(str(rel), int(size)) for rel, size in files.items()]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            return f"manifest {path} is unreadable: {type(e).__name__}: {e}"
        root = self._step_dir(step)
        for rel, size in expected:
            p = root / rel
            if not p.is_file():
                return f"missing file {p}"
            if p.stat().st_size != size:
                return f"file {p} has {p.stat().st_size} bytes, expected {size}"
        return None

    def _prune_manifests(self, live: set[int]) -> None:
        for p in (self.directory / MANIFEST_DIR).glob("*.json"):
            if p.stem.isdigit() and int(p.stem) not in live:
                p.unlink(missing_ok=True)

    def _make_private(self) -> None:
        # Files are written with the process umask by orbax and tensorstore; the 0o700
        # directory already keeps others out, this keeps a copied tree owner-only too.
        for root, dirs, files in os.walk(self.directory):
            for name, mode in [(d, PRIVATE_DIR) for d in dirs] + [(f, PRIVATE_FILE) for f in files]:
                p = os.path.join(root, name)
                try:
                    if os.stat(p).st_mode & 0o777 != mode:
                        os.chmod(p, mode)
                except FileNotFoundError:  # a temporary file orbax removed meanwhile
                    pass
