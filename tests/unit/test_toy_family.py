"""A new model family is one module and one registry entry: this file is the module (a
JAX-free Family and its flax model), the test registers it and trains it a few steps
through run_cell, the path every cell takes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import pytest

from trainers import accounting, families, models
from trainers.families.base import Family, ParamLayout
from trainers.models.layers import Embed, LMHead, Norm, dtype_of, layer_stack, mlp, run_stack
from trainers.spec import ModelConfig, UserError


class ToyFamily(Family):
    """A residual stack of its feed-forward form's MLPs over token embeddings: next-token prediction from the
    current token alone, decoder-only rows."""

    name = "toy-mlp"
    description = "toy MLP language model"
    model = f"{__name__}:ToyLM"

    def param_layout(self, cfg: ModelConfig) -> ParamLayout:
        d = cfg.d_model
        out: ParamLayout = [("embedding", "token_embedder", (cfg.vocab_size, d))]
        for i in range(cfg.num_decoder_layers):
            out.append(("decoder", f"layers_{i}.norm", (d,)))
            self.mlp.params(out, cfg, "decoder", f"layers_{i}.mlp")  # the form's (SwiGLU by default)
        return out + [("decoder", "final_norm", (d,)), ("head", "logits_dense", (d, cfg.vocab_size))]

    def matmul_params_per_token(self, cfg: ModelConfig) -> dict[str, float]:
        per = cfg.num_decoder_layers * self.mlp.matmul_params(cfg) + cfg.d_model * cfg.vocab_size
        return {"input": per, "target": per}

    def forward_flops_per_row(self, cfg: ModelConfig, input_length: int, target_length: int) -> float:
        return 2.0 * self.matmul_params_per_token(cfg)["input"] * (input_length + target_length)


class ToyBlock(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, xs, ctx, mode: str):
        dt, pdt = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        h = Norm(dtype=dt, param_dtype=pdt, name="norm")(x)
        return x + mlp(self.cfg)(h, mode != "train"), None


class ToyLM(nn.Module):
    cfg: ModelConfig

    def setup(self):
        dt, pdt = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        self.embed = Embed(self.cfg.vocab_size, self.cfg.d_model, dt, pdt)
        self.layers = layer_stack(self.cfg, ToyBlock, self.cfg.num_decoder_layers)
        self.final_norm = Norm(dtype=dt, param_dtype=pdt)
        self.head = LMHead(self.cfg.vocab_size, dt, pdt)

    def __call__(self, batch, deterministic=True):
        x = self.embed(jnp.asarray(batch["decoder_input_tokens"]))
        x, _ = run_stack(self.layers, x, None, {}, "eval" if deterministic else "train")
        return self.head(self.final_norm(x)).astype(jnp.float32)


TOY = ModelConfig(name="toy", family="toy-mlp", vocab_size=384, d_model=32, d_ff=64, num_heads=1, d_kv=8,
                  num_encoder_layers=0, num_decoder_layers=2)


@pytest.fixture
def registered(register_family):
    return register_family(ToyFamily())


def test_registry_refuses_duplicates_and_suggests_names(registered):
    with pytest.raises(ValueError, match="already registered"):
        registered.register(ToyFamily())
    with pytest.raises(UserError, match="unknown 'toy-mpl' \\(did you mean 'toy-mlp'\\?\\)"):
        families.get_family("toy-mpl")


def test_a_family_that_does_not_decode_says_so(registered):
    with pytest.raises(UserError, match=f"model.family: 'toy-mlp' does not decode \\({__name__}:ToyLM has no prefill\\)"):
        models.prefill(TOY, {}, [[3, 4]], 2)
    with pytest.raises(UserError, match="has no decode_state_axes"):
        models.decode_state_axes(TOY)


@pytest.mark.slow
def test_toy_family_trains_through_run_cell(registered, tmp_path):
    import jax

    from trainers.job import run_cell

    assert accounting.param_count(TOY) == models.param_count(models.param_shapes(TOY))
    axes = jax.tree.leaves(models.logical_axes(TOY), is_leaf=lambda x: isinstance(x, tuple))
    assert ("layers", "embed", "mlp") in axes  # scanned like the built-in families
    spec = {"sweep": "toy", "model": TOY.__dict__,
            "data": {"task_count": 9, "input_length": 32, "target_length": 16, "examples_per_task": 20},
            "optim": {"batch_size": 4, "steps": 3, "learning_rate": 1e-2}, "eval": {"loss": False}}
    result = run_cell(spec, home=str(tmp_path))
    assert result["status"] == "finished" and result["steps"] == 3 and math.isfinite(result["final_loss"])
    assert result["finetune_flops"] == accounting.train_flops(TOY, 3 * 4 * 32, 3 * 4 * 16) > 0
