"""Model presets: architecture, pretraining tokens and default finetuning hyperparameters.

The T5 and PaLM presets are the paper's models (the paper's section 4 for the architectures,
Table 22 for the finetuning hyperparameters). The tiny presets are small models with a byte
vocabulary that train on a laptop CPU in seconds to minutes: tiny-0..3 T5 v1.1-shaped,
tiny-dec-1..3 PaLM-shaped decoder-only models of about tiny-1..3's sizes. They have no
pretraining (0 tokens) unless a base checkpoint says otherwise (`flanscale pretrain` makes
one for either family).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from trainers.accounting import ACCELERATORS, Accelerator, get_accelerator, param_count
from trainers.spec import ModelConfig, UserError, did_you_mean

__all__ = ["ACCELERATORS", "Accelerator", "Finetune", "Preset", "Registry", "REGISTRY", "get_preset", "get_accelerator"]


@dataclass(frozen=True)
class Finetune:
    """Per-model finetuning defaults (paper Table 22)."""

    batch_size: int
    dropout: float
    learning_rate: float
    steps: int
    input_length: int = 2048
    target_length: int = 512


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    nominal: str  # the size the paper calls it by ("80M", "540B")
    pretrain_tokens: float  # tokens that made the base model (0 = trained from scratch here)
    finetune: Finetune
    display: str = ""  # the paper's name for the finetuned model

    @property
    def params(self) -> int:
        return param_count(self.model)


class Registry:
    """Named presets; duplicate names raise, unknown names suggest the closest."""

    def __init__(self) -> None:
        self._presets: dict[str, Preset] = {}

    def register(self, preset: Preset) -> Preset:
        if preset.name in self._presets:
            raise ValueError(f"preset {preset.name!r} is already registered")
        if preset.model.name != preset.name:
            raise ValueError(f"preset {preset.name!r} has model.name {preset.model.name!r}")
        self._presets[preset.name] = preset
        return preset

    def get(self, name: str, field: str = "model") -> Preset:
        if name not in self._presets:
            raise UserError(f"{field}: unknown preset {name!r}{did_you_mean(name, self.names())}; allowed: {', '.join(self.names())}")
        return self._presets[name]

    def names(self) -> list[str]:
        return list(self._presets)

    def __contains__(self, name: object) -> bool:
        return name in self._presets

    def __iter__(self) -> Iterator[Preset]:
        return iter(self._presets.values())

    def __len__(self) -> int:
        return len(self._presets)


REGISTRY = Registry()


def get_preset(name: str) -> Preset:
    return REGISTRY.get(name)


# T5 v1.1 LM-adapted: 1M steps x 2,048 sequences x 512 tokens of span corruption.
_T5_PRETRAIN_TOKENS = 1_000_000 * 2048 * 512


def _t5(name: str, nominal: str, d: int, ff: int, heads: int, layers: int, steps: int, display: str) -> Preset:
    model = ModelConfig(
        name=name, family="t5", vocab_size=32128, d_model=d, d_ff=ff, num_heads=heads, d_kv=64,
        num_kv_heads=0, num_encoder_layers=layers, num_decoder_layers=layers,
        tie_embeddings=False, parallel_block=False, dropout_rate=0.05,
        # T5X keeps float32 master weights and computes in bfloat16; layers are rematerialised
        # from XL up (what fits 2048/512 packed sequences on 32 GiB chips).
        param_dtype="float32", dtype="bfloat16", remat=d >= 2048,
    )
    return Preset(name, model, nominal, float(_T5_PRETRAIN_TOKENS), Finetune(64, 0.05, 5e-4, steps), display)


def _palm(name: str, nominal: str, d: int, heads: int, layers: int, tokens: float, batch: int,
          dropout: float, lr: float, steps: int, display: str) -> Preset:
    model = ModelConfig(
        name=name, family="decoder", vocab_size=256000, d_model=d, d_ff=4 * d, num_heads=heads,
        d_kv=256, num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=layers,
        tie_embeddings=True, parallel_block=True, dropout_rate=dropout,
        param_dtype="float32", dtype="bfloat16", remat=True,
    )
    return Preset(name, model, nominal, tokens, Finetune(batch, dropout, lr, steps), display)


# Byte tokenizer: 259 ids, rounded up to a multiple of 128 for the embedding table; CPU
# numerics; finetuned with batch 8 at 3e-3 for 100 steps on 256-byte inputs, 64-byte targets.
_TINY = dict(vocab_size=384, dropout_rate=0.0, param_dtype="float32", dtype="float32", remat=False)
_TINY_FINETUNE = Finetune(8, 0.0, 3e-3, 100, 256, 64)


def _tiny(name: str, nominal: str, d: int, ff: int, heads: int, d_kv: int, layers: int) -> Preset:
    model = ModelConfig(
        name=name, family="t5", d_model=d, d_ff=ff, num_heads=heads, d_kv=d_kv,
        num_kv_heads=0, num_encoder_layers=layers, num_decoder_layers=layers,
        tie_embeddings=False, parallel_block=False, **_TINY,
    )
    return Preset(name, model, nominal, 0.0, _TINY_FINETUNE, name)


def _tiny_dec(name: str, nominal: str, d: int, heads: int, d_kv: int, layers: int) -> Preset:
    # PaLM's block (multi-query attention, parallel attention + SwiGLU, tied embeddings,
    # d_ff = 4 d_model) at tiny-1..3's width with their encoder's and decoder's layers in
    # one stack, so a sweep compares the two families at about the same size.
    model = ModelConfig(
        name=name, family="decoder", d_model=d, d_ff=4 * d, num_heads=heads, d_kv=d_kv,
        num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=layers,
        tie_embeddings=True, parallel_block=True, **_TINY,
    )
    return Preset(name, model, nominal, 0.0, _TINY_FINETUNE, name)


for _p in (
    _tiny("tiny-0", "0.3M", 64, 192, 2, 32, 2),
    _tiny("tiny-1", "0.6M", 96, 256, 4, 24, 2),
    _tiny("tiny-2", "1.9M", 128, 512, 4, 32, 3),
    _tiny("tiny-3", "8M", 256, 768, 8, 32, 4),
    _tiny_dec("tiny-dec-1", "0.6M", 96, 4, 24, 4),
    _tiny_dec("tiny-dec-2", "2.0M", 128, 4, 32, 8),
    _tiny_dec("tiny-dec-3", "7.6M", 256, 8, 32, 8),
    _t5("t5-small", "80M", 512, 1024, 6, 8, 98_000, "Flan-T5-Small"),
    _t5("t5-base", "250M", 768, 2048, 12, 12, 84_000, "Flan-T5-Base"),
    _t5("t5-large", "780M", 1024, 2816, 16, 24, 64_000, "Flan-T5-Large"),
    _t5("t5-xl", "3B", 2048, 5120, 32, 24, 38_000, "Flan-T5-XL"),
    _t5("t5-xxl", "11B", 4096, 10240, 64, 24, 14_000, "Flan-T5-XXL"),
    _palm("palm-8b", "8B", 4096, 16, 32, 780e9, 32, 0.05, 3e-3, 40_000, "Flan-PaLM 8B"),
    _palm("palm-62b", "62B", 8192, 32, 64, 780e9, 32, 0.05, 3e-3, 40_000, "Flan-PaLM 62B"),
    _palm("palm-540b", "540B", 18432, 48, 118, 780e9, 32, 0.1, 1e-3, 21_000, "Flan-PaLM 540B"),
    _palm("cont-palm-62b", "62B", 8192, 32, 64, 1.3e12, 32, 0.05, 3e-3, 60_000, "Flan-cont-PaLM 62B"),
    # U-PaLM: PaLM 540B plus about 0.1% extra compute (UL2R), counted as 0.1% more tokens.
    _palm("u-palm-540b", "540B", 18432, 48, 118, 780e9 * 1.001, 32, 0.1, 1e-3, 30_000, "Flan-U-PaLM 540B"),
    # Not one of the paper's models: PaLM's architecture at a size one accelerator trains, for
    # checking plans against XLA and for the GPU benchmark. No pretraining of its own.
    _palm("palm-1b", "1.5B", 2048, 8, 16, 0.0, 32, 0.05, 3e-3, 40_000, "PaLM-style 1.5B"),
):
    REGISTRY.register(_p)

