"""Parameter, FLOPs and memory formulas on small cases computed by hand."""

from __future__ import annotations

import dataclasses

import pytest

from trainers import accounting as A
from trainers.spec import MeshConfig, ModelConfig, UserError

# d=8, ff=16, 2 heads x d_kv 4 (inner 8), vocab 10, 1 encoder + 1 decoder layer, 4 buckets.
T5 = ModelConfig(name="t", family="t5", vocab_size=10, d_model=8, d_ff=16, num_heads=2, d_kv=4,
                 num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=4)
# Decoder-only, MQA: d=8, ff=32, 2 heads x d_kv 4, 1 kv head, 2 layers, tied, parallel.
DEC = ModelConfig(name="d", family="decoder", vocab_size=10, d_model=8, d_ff=32, num_heads=2, d_kv=4,
                  num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=2, tie_embeddings=True,
                  parallel_block=True)


def test_t5_param_count_by_hand():
    emb, head = 10 * 8, 8 * 10
    attn = 4 * 8 * 8  # q, k, v, o
    mlp = 3 * 8 * 16
    enc = 4 * 2 + 2 * 8 + attn + mlp + 8  # rel-bias table, 2 norms, final norm
    dec = 4 * 2 + 3 * 8 + 2 * attn + mlp + 8
    assert A.param_count(T5) == emb + head + enc + dec
    split = A.param_count_split(T5)
    assert split == {"encoder": enc + emb, "decoder": dec + head, "embedding": emb + head, "total": emb + head + enc + dec}


def test_decoder_param_count_by_hand():
    per_layer = 8 + (8 * 8 + 2 * 8 * 4 + 8 * 8) + 3 * 8 * 32  # norm, q, k+v (one head), o, SwiGLU
    total = 10 * 8 + 2 * per_layer + 8
    assert A.param_count(DEC) == total
    assert A.param_count_split(DEC) == {"encoder": 0, "decoder": total, "embedding": 80, "total": total}
    # Without the parallel block each layer has a second norm.
    assert A.param_count(ModelConfig(**{**DEC.__dict__, "parallel_block": False})) == total + 2 * 8


def test_train_flops_paper_convention():
    split = A.param_count_split(T5)
    assert A.train_flops(T5, 100, 30) == 6 * (split["encoder"] * 100 + split["decoder"] * 30)
    assert A.train_flops(DEC, 100, 30) == 6 * A.param_count(DEC) * 130
    assert A.pretrain_flops(DEC, 1000) == 6 * A.param_count(DEC) * 1000
    assert A.pretrain_flops(T5, 1000) == 3 * A.param_count(T5) * 1000


def test_step_flops_by_hand():
    li, lt, b = 6, 3, 2
    inner = 8
    enc_tok = 4 * 8 * 8 + 3 * 8 * 16  # self-attn q,k,v,o + MLP
    cross_kv = 2 * 8 * 8  # cross-attention k, v over encoder outputs
    dec_tok = 4 * 8 * 8 + 2 * 8 * 8 + 3 * 8 * 16 + 8 * 10  # self q,k,v,o; cross q,o; MLP; head
    attn = 4 * inner * (li * li + lt * lt + lt * li)  # QK^T + AV, encoder self, decoder self, cross
    fwd = 2 * ((enc_tok + cross_kv) * li + dec_tok * lt) + attn
    assert A.step_flops(T5, b, li, lt) == pytest.approx(3 * fwd * b)

    length = li + lt
    tok = 2 * (8 * 8 + 8 * 4) + 3 * 8 * 32  # q,o + k,v (one kv head) + SwiGLU
    fwd = 2 * (2 * tok + 8 * 10) * length + 2 * 4 * inner * length * length
    assert A.step_flops(DEC, b, li, lt) == pytest.approx(3 * fwd * b)


def test_step_flops_close_to_6n_for_large_models():
    # For a large model the attention term is small and step FLOPs ~ 6 N tokens.
    cfg = ModelConfig(name="big", family="decoder", vocab_size=256000, d_model=8192, d_ff=32768, num_heads=32,
                      d_kv=256, num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=64,
                      tie_embeddings=True, parallel_block=True)
    ratio = A.step_flops(cfg, 1, 2048, 512) / A.train_flops(cfg, 2048, 512)
    assert 1.0 < ratio < 1.2


def test_memory_sharding_remat_and_inference():
    mesh1 = MeshConfig(devices=1)
    mesh4 = MeshConfig(devices=4, fsdp=4)
    base = A.memory_per_device(T5, mesh1, 8, 64, 16, remat=False)
    assert base["total"] == pytest.approx(sum(v for k, v in base.items() if k != "total"))
    assert base["params"] == A.param_count(T5) * 4
    sharded = A.memory_per_device(T5, mesh4, 8, 64, 16, remat=False)
    assert sharded["params"] == pytest.approx(base["params"] / 4)
    assert sharded["activations"] == pytest.approx(base["activations"] / 4)  # rows split over fsdp
    # Remat pays for the layer it recomputes (activations and their gradients): it saves
    # memory once a stack is a few layers deep.
    deep = ModelConfig(**{**T5.__dict__, "num_encoder_layers": 4, "num_decoder_layers": 4})
    remat = A.memory_per_device(deep, mesh1, 8, 64, 16, remat=True)
    unrolled = A.memory_per_device(deep, mesh1, 8, 64, 16, remat=False)
    assert remat["activations"] < unrolled["activations"] and remat["params"] == unrolled["params"]
    infer = A.memory_per_device(T5, mesh1, 8, 64, 16, remat=False, training=False)
    assert infer["grads"] == infer["optimizer"] == 0 and infer["activations"] < base["activations"]
    bf16 = ModelConfig(**{**T5.__dict__, "param_dtype": "bfloat16"})
    assert A.memory_per_device(bf16, mesh1, 8, 64, 16, remat=False)["params"] == base["params"] / 2


def test_adafactor_factors_large_tensors_only():
    tensors = len(A.param_layout(T5))
    # Every tensor of T5 is smaller than 128 on its second-largest side: full second moments
    # (plus optax's two 1-element placeholders per tensor).
    assert A.adafactor_state_elements(T5) == A.param_count(T5) + 2 * tensors
    # With a threshold of 8: the 10x8 embedding keeps 10 + 8 (+1) statistics instead of 80.
    small = A.adafactor_state_elements(T5, factored_min_dim=8)
    assert small < A.param_count(T5)
    emb = A.adafactor_state_elements(ModelConfig(**{**DEC.__dict__, "num_decoder_layers": 0}), factored_min_dim=8)
    assert emb == (10 + 8 + 1) + (8 + 2)  # embedding table factored, final norm full


def test_peak_flops_and_unknown_accelerator():
    assert A.peak_flops("tpu-v4", "bfloat16") == 275e12
    assert A.peak_flops("a100-40g", "float32") == 19.5e12
    assert A.peak_flops("cpu", "float32") == A.host_cpu_peak_flops()
    with pytest.raises(UserError, match=r"did you mean 'h100-80g'"):
        A.peak_flops("h100", "bfloat16")


@pytest.mark.slow
def test_estimates_agree_with_the_compiled_train_step():
    """Analytic step FLOPs and memory against XLA's own analysis of the real train step
    (CPU, tiny-1 with 512/128 packed lengths, no remat)."""
    pytest.importorskip("trainers.train")
    import jax
    import jax.numpy as jnp

    from orchestrator.catalog import get_preset
    from trainers import models
    from trainers.optim import build_optimizer
    from trainers.spec import OptimConfig
    from trainers.train import make_train_step

    rows, li, lt = 4, 512, 128
    optimizer = build_optimizer(OptimConfig())
    batch = {f"{side}_{kind}": jax.ShapeDtypeStruct((rows, n), jnp.int32)
             for side, n in (("encoder", li), ("decoder", lt)) for kind in ("segment_ids", "positions")}
    batch |= {k: jax.ShapeDtypeStruct((rows, n), jnp.int32) for k, n in
              (("encoder_input_tokens", li), ("decoder_input_tokens", lt), ("decoder_target_tokens", lt))}
    batch["decoder_loss_weights"] = jax.ShapeDtypeStruct((rows, lt), jnp.float32)
    # FLOPs from the unrolled layout (XLA's cost analysis counts a loop body, a scanned layer
    # stack, only once); memory from the scanned one, the default.
    for scan_layers in (False, True):
        cfg = dataclasses.replace(get_preset("tiny-1").model, scan_layers=scan_layers)
        step = make_train_step(models.build(cfg).apply, optimizer, loss_fn=models.loss_fn(cfg), micro_batches=1,
                               z_loss=1e-4, dropout=False)
        params = models.param_shapes(cfg)
        state = {"params": params, "opt_state": jax.eval_shape(optimizer.init, params),
                 "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.eval_shape(lambda: jax.random.PRNGKey(0))}
        compiled = jax.jit(step).lower(state, batch).compile()
        if not scan_layers:
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            assert cost["flops"] == pytest.approx(A.step_flops(cfg, rows, li, lt), rel=0.1)
            continue
        mem = compiled.memory_analysis()
        xla_bytes = mem.temp_size_in_bytes + mem.argument_size_in_bytes
        estimate = A.memory_per_device(cfg, MeshConfig(), rows, li, lt, remat=False)["total"]
        assert estimate == pytest.approx(xla_bytes, rel=0.3)


def test_host_cpu_peak_comes_from_clock_cores_and_vector_width():
    avx512 = "processor\t: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu sse2 avx2 fma avx512f\n"
    avx2 = avx512.replace(" avx512f", "")
    assert A.host_cpu_peak_flops(avx512, cores=2) == pytest.approx(2 * 2.6e9 * 64)
    assert A.host_cpu_peak_flops(avx2, cores=4) == pytest.approx(4 * 2.6e9 * 32)
    assert A.host_cpu_peak_flops("garbage", cores=3) == 3e11


def test_measured_pretrain_flops_reads_the_base_checkpoint_record(tmp_path):
    assert A.measured_pretrain_flops(str(tmp_path)) == 0.0  # no record: unknown
    (tmp_path / "pretrain.json").write_text('{"flops": 2.5e15}')
    assert A.measured_pretrain_flops(str(tmp_path)) == 2.5e15
    (tmp_path / "pretrain.json").write_text("{truncated")
    with pytest.raises(UserError, match=r"pretrain\.json: not a valid pretrain\.json") as e:
        A.measured_pretrain_flops(str(tmp_path))
    assert "\n" not in str(e.value)


def test_paper_flops_table2_convention():
    """c x N x tokens with the paper's nominal N and pretraining tokens, not the exact count."""
    xl = ModelConfig(name="t5-xl", family="t5", vocab_size=32128, d_model=2048, d_ff=5120, num_heads=32, d_kv=64,
                     num_encoder_layers=24, num_decoder_layers=24)
    positions = 38_000 * 64 * 2560
    p = A.paper_flops(xl, positions)
    assert p == {"pretrain": 3 * 3e9 * 1e12, "finetune": 3 * 3e9 * positions, "fraction": positions / 1e12}
    assert A.paper_flops(xl, positions, pretrain_tokens=2e12)["pretrain"] == 3 * 3e9 * 2e12
    # A model the paper does not name: its exact size, and no pretraining unless told.
    mine = A.paper_flops(DEC, 1000)
    assert mine == {"pretrain": None, "finetune": 6 * A.param_count(DEC) * 1000, "fraction": None}
    assert A.paper_flops(T5, 1000, 1e6)["fraction"] == pytest.approx(1e-3)


def test_measured_pretrain_tokens(tmp_path):
    assert A.measured_pretrain_tokens(str(tmp_path)) == 0.0
    (tmp_path / "pretrain.json").write_text('{"flops": 2.5e15, "tokens": 4e6}')
    assert A.measured_pretrain_tokens(str(tmp_path)) == 4e6
