"""Model families, JAX-free: an explicit registry of `Family` objects (trainers/families/base.py).

Everything that differs between kinds of model is asked of the family of a ModelConfig
(`family_of(cfg)`): accounting (parameters, FLOPs, memory), packing (the batch layout),
trainers/models (the flax module, dummy batch, Hugging Face conversion) and model cards.
Adding a family is one module (a Family subclass, with its flax module) plus one entry in
FAMILIES; a variant of a built-in family (another feed-forward form, trainers/families/mlp.py,
or another loss) is a subclass that changes only that.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainers.families.base import Family
from trainers.families.decoder import DecoderFamily
from trainers.families.t5 import T5Family
from trainers.spec import ModelConfig, UserError, did_you_mean

DTYPES = ("float32", "bfloat16", "float16")
# model.remat_policy -> the jax.checkpoint_policies entry it selects (what a rematerialised
# layer keeps): only its input, every matmul output, or the matmuls against weights but not
# the [length, length] attention scores.
REMAT_POLICIES = {"full": "nothing_saveable", "dots": "checkpoint_dots",
                  "dots_no_batch": "checkpoint_dots_with_no_batch_dims"}


class FamilyRegistry:
    """Families by name; registering a name twice raises, an unknown name suggests the closest."""

    def __init__(self, families: tuple[Family, ...] = ()):
        self._families: dict[str, Family] = {}
        for family in families:
            self.register(family)

    def register(self, family: Family) -> Family:
        if family.name in self._families:
            raise ValueError(f"model family {family.name!r} is already registered")
        self._families[family.name] = family
        return family

    def get(self, name: str) -> Family:
        if name not in self._families:
            raise UserError(f"model.family: unknown {name!r}{did_you_mean(name, self._families)}; "
                            f"allowed: {', '.join(self._families)}")
        return self._families[name]

    def names(self) -> list[str]:
        return list(self._families)

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families.values())


FAMILIES = FamilyRegistry((T5Family(), DecoderFamily()))


def get_family(name: str) -> Family:
    return FAMILIES.get(name)


def family_of(cfg: ModelConfig) -> Family:
    return FAMILIES.get(cfg.family)


def validate(cfg: ModelConfig) -> None:
    """Reject configurations no family can build, naming the field (one UserError line)."""
    family = family_of(cfg)
    for name in ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_decoder_layers"):
        if getattr(cfg, name) < 1:
            raise UserError(f"model.{name}: {getattr(cfg, name)!r} must be >= 1")
    for name in ("dtype", "param_dtype"):
        if getattr(cfg, name) not in DTYPES:
            raise UserError(f"model.{name}: unknown {getattr(cfg, name)!r}; allowed: {', '.join(DTYPES)}")
    if cfg.remat_policy not in REMAT_POLICIES:
        raise UserError(f"model.remat_policy: unknown {cfg.remat_policy!r}{did_you_mean(cfg.remat_policy, REMAT_POLICIES)}; "
                        f"allowed: {', '.join(REMAT_POLICIES)}")
    if not 0.0 <= cfg.dropout_rate < 1.0:
        raise UserError(f"model.dropout_rate: {cfg.dropout_rate!r} must be in [0, 1)")
    kv = cfg.num_kv_heads or cfg.num_heads
    if kv < 0 or cfg.num_heads % kv:
        raise UserError(f"model.num_kv_heads: {cfg.num_kv_heads} must divide num_heads {cfg.num_heads} (0 = num_heads)")
    family.validate(cfg)
