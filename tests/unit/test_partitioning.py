"""Mesh construction, logical-axis rules and sharded forward passes on 8 host devices.

The multi-device checks run in a subprocess: XLA_FLAGS must be set before jax is imported,
and this test process has already imported it with one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from trainers.spec import MeshConfig, ModelConfig, UserError

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from trainers import models, partitioning
    from trainers.spec import MeshConfig, ModelConfig, UserError

    t5 = ModelConfig(vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                     num_encoder_layers=1, num_decoder_layers=1)
    dec = ModelConfig(family="decoder", vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                      num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=2,
                      tie_embeddings=True, parallel_block=True)
    rng = np.random.default_rng(0)

    def packed(length):
        # Two examples per row: segment ids 1, 2 and positions restarting at 0.
        seg = np.zeros((8, length), np.int32); seg[:, :5] = 1; seg[:, 5:length - 2] = 2
        pos = np.zeros_like(seg); pos[:, :5] = np.arange(5); pos[:, 5:length - 2] = np.arange(length - 7)
        tok = np.where(seg > 0, rng.integers(3, 100, seg.shape), 0).astype(np.int32)
        return tok, seg, pos

    results = {}
    for name, cfg in (("t5", t5), ("decoder", dec)):
        params = models.init_params(cfg, jax.random.key(0))
        if name == "t5":
            et, es, ep = packed(12); dt, ds, dp = packed(10)
            batch = dict(encoder_input_tokens=et, encoder_segment_ids=es, encoder_positions=ep,
                         decoder_input_tokens=dt, decoder_segment_ids=ds, decoder_positions=dp)
        else:
            dt, ds, dp = packed(14)
            batch = dict(decoder_input_tokens=dt, decoder_segment_ids=ds, decoder_positions=dp)
        module = models.build(cfg)
        outs, specs = {}, {}
        for shape in ((1, 1, 1), (2, 2, 2), (1, 4, 2), (8, 1, 1)):
            mesh_cfg = MeshConfig(devices=int(np.prod(shape)), data=shape[0], fsdp=shape[1], tensor=shape[2])
            mesh = partitioning.make_mesh(mesh_cfg)
            p = partitioning.shard_params(params, partitioning.param_shardings(cfg, mesh))
            b = partitioning.shard_batch(batch, mesh)
            with partitioning.activation_sharding(mesh):
                logits = jax.jit(lambda p, b: module.apply({"params": p}, b))(p, b)
            outs[str(shape)] = np.asarray(logits)
            mlp = p["decoder"]["layers"]["mlp"]["wi_0"] if name == "t5" else p["layers"]["mlp"]["wi_0"]
            specs[str(shape)] = [str(mlp.sharding.spec), len(mlp.addressable_shards),
                                 list(logits.sharding.shard_shape(logits.shape))]
        if name == "decoder":
            # Incremental decoding with the params sharded on the last mesh agrees too.
            prompts = np.where(np.arange(6) < np.array([[2], [6]] * 4), dt[:, :6], 0).astype(np.int32)
            decoded = []
            for params_here in (params, p):
                state = models.prefill(cfg, params_here, prompts, 3)
                logits, state = models.decode_step(cfg, params_here, state, np.zeros(8, np.int32))
                logits, state = models.decode_step(cfg, params_here, state, np.full(8, 7, np.int32))
                decoded.append(np.asarray(logits))
            results["decode_diff"] = float(np.abs(decoded[0] - decoded[1]).max())
        ref = outs["(1, 1, 1)"]
        results[name] = {"diff": {k: float(np.abs(v - ref).max()) for k, v in outs.items()},
                         "specs": specs, "finite": bool(np.isfinite(ref).all())}
    try:
        mesh = partitioning.make_mesh(MeshConfig(devices=2, tensor=2))
        partitioning.param_shardings(ModelConfig(vocab_size=101, d_model=32, d_ff=64, num_heads=4, d_kv=8), mesh)
        results["error"] = None
    except UserError as e:
        results["error"] = str(e)
    print("RESULT " + json.dumps(results))
    """
)


def test_sharded_forward_is_mesh_independent():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    for name in ("t5", "decoder"):
        assert results[name]["finite"]
        assert max(results[name]["diff"].values()) < 1e-5, results[name]
        specs = results[name]["specs"]
        # Scanned wi_0 is [layers, embed, mlp] -> (None, fsdp, tensor): layers replicated, one
        # shard per device on the 2x2x2 mesh's fsdp x tensor plane, replicated over data.
        assert specs["(2, 2, 2)"][0].endswith("(None, 'fsdp', 'tensor')")
        assert specs["(1, 4, 2)"][1] == 8
        # Logits [8, L, V] come out split by rows over data x fsdp (and vocab over tensor).
        assert specs["(8, 1, 1)"][2][0] == 1 and specs["(2, 2, 2)"][2][0] == 2
    assert results["decode_diff"] < 1e-5
    assert results["error"] is not None
    assert "vocab" in results["error"] and "101" in results["error"] and "tensor" in results["error"]


def test_mesh_config_errors():
    from trainers import partitioning

    with pytest.raises(UserError, match="mesh.devices = 4"):
        partitioning.make_mesh(MeshConfig(devices=4, data=2, fsdp=1, tensor=1))
    with pytest.raises(UserError, match="needs 2 devices"):
        partitioning.make_mesh(MeshConfig(devices=2, data=2), devices=[object()])
    mesh = partitioning.make_mesh(MeshConfig())
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.shape == (1, 1, 1)


def test_logical_rules():
    from trainers import partitioning
    from jax.sharding import PartitionSpec as P

    assert partitioning.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert partitioning.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert partitioning.logical_to_spec(("embed", "kv_heads", "kv")) == P("fsdp", None, None)
    # fsdp is taken by batch, so activations' embed dimension stays whole.
    assert partitioning.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)


def test_all_params_have_known_axes():
    from trainers import models, partitioning

    known = {name for name, _ in partitioning.RULES}
    for cfg in (ModelConfig(), ModelConfig(family="decoder", num_encoder_layers=0, num_kv_heads=1)):
        for names in jax.tree.leaves(models.logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple)):
            assert set(names) <= known, names


OPT_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    from trainers import models, optim, partitioning
    from trainers.spec import MeshConfig, ModelConfig, OptimConfig

    # d_model and d_ff >= 128, so Adafactor factors the MLP kernels' second moments.
    cfg = ModelConfig(vocab_size=256, d_model=128, d_ff=256, num_heads=4, d_kv=32,
                      num_encoder_layers=2, num_decoder_layers=2)
    mesh = partitioning.make_mesh(MeshConfig(devices=8, data=1, fsdp=4, tensor=2))
    shardings = partitioning.param_shardings(cfg, mesh)
    shapes = models.param_shapes(cfg)
    opt = optim.build_optimizer(OptimConfig())
    state = jax.eval_shape(opt.init, shapes)
    out = partitioning.state_shardings(state, shardings, shapes, mesh)
    found = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(out)):
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if name.endswith("decoder/layers/mlp/wi_0/kernel") or "mlp/wi_0" in name:
            found[name] = [list(leaf.shape), str(sh.spec)]
    per_device = sum(sh.shard_shape(l.shape) and __import__("math").prod(sh.shard_shape(l.shape))
                     for l, sh in zip(jax.tree.leaves(state), jax.tree.leaves(out)) if l.shape)
    total = sum(__import__("math").prod(l.shape) for l in jax.tree.leaves(state) if l.shape)
    print("RESULT " + json.dumps({"found": found, "per_device": per_device, "total": total}))
    """
)


def test_optimizer_state_is_sharded_like_its_parameters():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", OPT_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    specs = {tuple(shape): spec for shape, spec in results["found"].values()}
    # wi_0 of the scanned stack is [layers, embed, mlp] -> (None, fsdp, tensor); its factored
    # row statistics drop mlp, its column statistics drop embed.
    assert specs[(2, 128)].endswith("(None, 'fsdp')"), results["found"]
    assert specs[(2, 256)].endswith("(None, 'tensor')"), results["found"]
    # Nothing the size of a layer stays whole on every device.
    assert results["per_device"] < results["total"] / 4, results
