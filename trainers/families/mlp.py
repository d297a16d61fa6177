"""Feed-forward forms, JAX-free: what a family's MLP is, for every part that depends on it.

A family names its form (`Family.mlp`); the parameter layout, the FLOPs, the planner's
activation memory, the flax layer (trainers/models/layers.py builds `module` from the form)
and the Hugging Face T5 conversion all ask the form instead of assuming one. A new form is
one `MLPForm` (and, where `activation` and `gated` cannot express it, its own flax module
named by `module`, built as `module(form=..., d_ff=..., dropout_rate=..., dtype=...,
param_dtype=..., name="mlp")`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.spec import ModelConfig

# Activation names trainers/models/layers.py maps to functions.
ACTIVATIONS = ("gelu", "silu", "relu")  # gelu: tanh approximation (HF "gelu_new")


@dataclass(frozen=True)
class MLPForm:
    """x -> act(x wi_0) * (x wi_1) -> wo (gated) or x -> act(x wi) -> wo (plain)."""

    name: str  # e.g. "gated-gelu", as model cards and Hugging Face T5's feed_forward_proj say it
    activation: str
    gated: bool
    # Tensors of d_ff elements per token that a training step keeps for the backward pass
    # (what XLA's memory analysis shows): the planner's activation memory of the MLP.
    saved_per_hidden: float
    module: str = "trainers.models.layers:MLP"  # "module:Class" of the flax layer
    hf_name: str = ""  # Hugging Face T5 `feed_forward_proj` of this form; "" = none

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPForm {self.name!r}: activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the input projections, [d_model, d_ff] each (the output one is `wo`)."""
        return ("wi_0", "wi_1") if self.gated else ("wi",)

    def params(self, out: list, cfg: ModelConfig, part: str, prefix: str) -> None:
        """Append the form's parameters, in the order the flax layer creates them."""
        for name in self.inputs:
            out.append((part, f"{prefix}.{name}", (cfg.d_model, cfg.d_ff)))
        out.append((part, f"{prefix}.wo", (cfg.d_ff, cfg.d_model)))

    def matmul_params(self, cfg: ModelConfig) -> int:
        """Parameters a token multiplies by in one MLP."""
        return (len(self.inputs) + 1) * cfg.d_model * cfg.d_ff


# Of a gated MLP's hidden units XLA keeps about eight tensors: both projections, the
# activation's intermediates and output, the gated product.
GATED_GELU = MLPForm("gated-gelu", "gelu", gated=True, saved_per_hidden=8, hf_name="gated-gelu")  # T5 v1.1
SWIGLU = MLPForm("swiglu", "silu", gated=True, saved_per_hidden=8)  # PaLM
