"""Model presets and the accelerator table against the paper's figures."""

from __future__ import annotations

import pytest

from orchestrator.catalog import ACCELERATORS, REGISTRY, Finetune, Preset, Registry, get_preset
from trainers.spec import ModelConfig, UserError

T5 = {  # the paper's section 4 / Table 22: d_model, d_ff, heads, layers, steps
    "t5-small": (512, 1024, 6, 8, 98_000),
    "t5-base": (768, 2048, 12, 12, 84_000),
    "t5-large": (1024, 2816, 16, 24, 64_000),
    "t5-xl": (2048, 5120, 32, 24, 38_000),
    "t5-xxl": (4096, 10240, 64, 24, 14_000),
}
PALM = {  # layers, heads, d_model, batch, dropout, lr, steps, pretraining tokens
    "palm-8b": (32, 16, 4096, 32, 0.05, 3e-3, 40_000, 780e9),
    "palm-62b": (64, 32, 8192, 32, 0.05, 3e-3, 40_000, 780e9),
    "palm-540b": (118, 48, 18432, 32, 0.1, 1e-3, 21_000, 780e9),
    "cont-palm-62b": (64, 32, 8192, 32, 0.05, 3e-3, 60_000, 1.3e12),
    "u-palm-540b": (118, 48, 18432, 32, 0.1, 1e-3, 30_000, 780e9 * 1.001),
}


@pytest.mark.parametrize("name", list(T5))
def test_t5_presets_match_paper(name):
    d, ff, heads, layers, steps = T5[name]
    p = get_preset(name)
    m = p.model
    assert (m.family, m.vocab_size, m.d_kv) == ("t5", 32128, 64)
    assert (m.d_model, m.d_ff, m.num_heads, m.num_encoder_layers, m.num_decoder_layers) == (d, ff, heads, layers, layers)
    assert not m.tie_embeddings and not m.parallel_block
    assert p.finetune == Finetune(64, 0.05, 5e-4, steps, 2048, 512)
    assert p.pretrain_tokens == pytest.approx(1_000_000 * 2048 * 512)


@pytest.mark.parametrize("name", list(PALM))
def test_palm_presets_match_paper(name):
    layers, heads, d, batch, dropout, lr, steps, tokens = PALM[name]
    p = get_preset(name)
    m = p.model
    assert (m.family, m.vocab_size, m.d_kv, m.num_kv_heads) == ("decoder", 256000, 256, 1)
    assert (m.num_decoder_layers, m.num_heads, m.d_model, m.d_ff) == (layers, heads, d, 4 * d)
    assert m.num_encoder_layers == 0 and m.tie_embeddings and m.parallel_block
    assert p.finetune == Finetune(batch, dropout, lr, steps, 2048, 512)
    assert p.pretrain_tokens == pytest.approx(tokens)


def test_paper_parameter_counts():
    # PaLM paper Table 1 and the T5 v1.1 checkpoints' sizes.
    assert get_preset("palm-8b").params / 1e9 == pytest.approx(8.63, abs=0.01)
    assert get_preset("palm-62b").params / 1e9 == pytest.approx(62.50, abs=0.01)
    assert get_preset("palm-540b").params / 1e9 == pytest.approx(540.35, abs=0.01)
    assert get_preset("t5-xxl").params / 1e9 == pytest.approx(11.14, abs=0.01)
    assert get_preset("t5-small").params / 1e6 == pytest.approx(77.0, abs=0.1)


def test_tiny_presets_sizes_and_byte_vocab():
    sizes = {"tiny-0": (0.2e6, 0.4e6), "tiny-1": (0.3e6, 0.8e6), "tiny-2": (1.5e6, 3e6), "tiny-3": (6e6, 10e6)}
    for name, (lo, hi) in sizes.items():
        p = get_preset(name)
        assert lo <= p.params <= hi, (name, p.params)
        assert p.model.family == "t5" and p.model.vocab_size >= 259 and 16 <= p.model.d_kv <= 32
        assert p.pretrain_tokens == 0


def test_registry_rejects_duplicates_and_suggests():
    reg = Registry()
    preset = Preset("m", ModelConfig(name="m"), "1M", 0.0, Finetune(8, 0.0, 1e-3, 10))
    reg.register(preset)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(preset)
    with pytest.raises(UserError, match=r"did you mean 'palm-62b'"):
        get_preset("palm-64b")
    assert len(REGISTRY) == 18 and "tiny-1" in REGISTRY


def test_accelerator_table():
    assert set(ACCELERATORS) == {"cpu", "a100-40g", "a100-80g", "h100-80g", "h200-141g",
                                 "tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"}
    for acc in ACCELERATORS.values():
        assert acc.kind in {"cpu", "gpu", "tpu"}
        assert list(acc.slice_sizes) == sorted(set(acc.slice_sizes))
        assert acc.memory_gib > 0 and acc.peak_bf16_flops >= acc.peak_fp32_flops > 0 and acc.price_per_device_hour > 0
    assert ACCELERATORS["tpu-v4"].peak_bf16_flops == 275e12 and ACCELERATORS["tpu-v4"].memory_gib == 32
    assert ACCELERATORS["a100-80g"].peak_bf16_flops == 312e12
    assert ACCELERATORS["tpu-v4"].hosts(512) == 128 and ACCELERATORS["tpu-v4"].hosts(4) == 1
    assert ACCELERATORS["tpu-v5e"].hosts(8) == 1 and ACCELERATORS["tpu-v5e"].hosts(16) == 4
    assert ACCELERATORS["h100-80g"].hosts(16) == 2
