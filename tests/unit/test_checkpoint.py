"""Checkpointer: asynchronous saves with manifests, fallback over any damaged file (the
manifest included) with a warning naming it, a clear start over when all are damaged, and
owner-only permissions."""

import logging
import os
import stat

import jax
import jax.numpy as jnp

from trainers.checkpoint import MANIFEST_DIR, Checkpointer


def _toy_state(value: float):
    params = {"w": jnp.full((64, 32), value), "b": jnp.zeros((32,))}
    return {"params": params, "step": jnp.int32(value), "rng": jax.random.PRNGKey(0)}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _saved(directory, steps=(1, 2)) -> Checkpointer:
    ck = Checkpointer(directory, keep=3)
    for step in steps:
        ck.save(step, _toy_state(step), {"data": {"position": step}})
    ck.close()
    return ck


def _restore(directory):
    return Checkpointer(directory, keep=3).restore(_abstract(_toy_state(0)))


def test_async_saves_are_recorded_once_committed(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=2)
    ck.save(1, _toy_state(1), {"data": {"position": 1}})
    meta = {"data": {"position": 2}}
    ck.save(2, _toy_state(2), meta, final=True)
    meta["data"]["position"] = 99  # the caller's dict changes after save: the checkpoint does not
    assert sorted(p.name for p in (tmp_path / "ck" / MANIFEST_DIR).iterdir()) == ["1.json", "2.json"]
    step, state, restored_meta = ck.restore(_abstract(_toy_state(0)))
    assert step == 2 and restored_meta == {"data": {"position": 2}} and float(state["params"]["w"][0, 0]) == 2.0
    ck.close()


def test_garbled_manifest_falls_back_naming_the_manifest(tmp_path, caplog):
    _saved(tmp_path / "ck")
    manifest = tmp_path / "ck" / MANIFEST_DIR / "2.json"
    manifest.write_bytes(b"\x00{garbled")
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        step, _, meta = _restore(tmp_path / "ck")
    assert step == 1 and meta["data"]["position"] == 1
    assert "step 2 is damaged" in caplog.text and str(manifest) in caplog.text
    assert Checkpointer(tmp_path / "ck").steps() == [1]  # the damaged step is discarded


def test_truncated_array_file_falls_back_naming_the_file(tmp_path, caplog):
    _saved(tmp_path / "ck")
    victim = max((p for p in (tmp_path / "ck" / "2" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        step, _, _ = _restore(tmp_path / "ck")
    assert step == 1 and "step 2 is damaged" in caplog.text and str(victim) in caplog.text


def test_damaged_data_without_a_manifest_falls_back_on_the_restore_error(tmp_path, caplog):
    _saved(tmp_path / "ck")
    (tmp_path / "ck" / MANIFEST_DIR / "2.json").unlink()  # as if the run died before writing it
    meta_file = next(p for p in (tmp_path / "ck" / "2" / "meta").rglob("*") if p.is_file())
    meta_file.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        step, _, _ = _restore(tmp_path / "ck")
    assert step == 1 and "step 2 is damaged" in caplog.text and str(tmp_path / "ck" / "2") in caplog.text


def test_every_checkpoint_damaged_says_it_starts_over(tmp_path, caplog):
    _saved(tmp_path / "ck")
    (tmp_path / "ck" / MANIFEST_DIR / "2.json").write_text("[]")
    next(p for p in (tmp_path / "ck" / "1" / "state").rglob("*") if p.is_file() and "ocdbt" in str(p)).unlink()
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        assert _restore(tmp_path / "ck") is None
    assert "every checkpoint (steps 1, 2) is damaged; the cell starts over from step 0" in caplog.text
    assert Checkpointer(tmp_path / "ck").steps() == []


def test_reader_skips_a_garbled_manifest_without_deleting(tmp_path, caplog):
    _saved(tmp_path / "ck")
    (tmp_path / "ck" / MANIFEST_DIR / "2.json").write_text("{")
    target = _abstract(_toy_state(0))["params"]
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        step, params = Checkpointer(tmp_path / "ck", create=False).restore_params(target)
    assert step == 1 and float(params["w"][0, 0]) == 1.0 and "2.json" in caplog.text
    assert Checkpointer(tmp_path / "ck", create=False).steps() == [1, 2]


def test_checkpoints_are_readable_by_the_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        _saved(tmp_path / "ck")
    finally:
        os.umask(old)
    root = tmp_path / "ck"
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    assert len(modes) > 5
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o700 if p.is_dir() else 0o600)}
    assert not wrong, wrong
