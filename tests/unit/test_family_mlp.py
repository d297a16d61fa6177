"""A T5 variant with another feed-forward form is one module and one registry entry: this
module holds the whole family (the original T5's plain ReLU MLP on T5 v1.1's blocks), and
its form reaches the parameter layout, the FLOPs, the planner's memory, the flax model and
the Hugging Face conversion with nothing else changed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from orchestrator.catalog import get_preset
from trainers import accounting, families
from trainers.families.mlp import MLPForm
from trainers.families.t5 import T5Family
from trainers.spec import CellSpec, DataConfig, MeshConfig, ModelConfig, OptimConfig

# Of a ReLU MLP's hidden units a training step keeps two tensors: the projection and the
# activation's output (XLA's memory analysis; the test below holds the planner to it).
RELU = MLPForm("relu", "relu", gated=False, saved_per_hidden=2, hf_name="relu")


class T5ReluFamily(T5Family):
    name = "t5-relu"
    description = "T5 encoder-decoder with a ReLU feed-forward"
    mlp = RELU


@pytest.fixture
def registered(register_family):
    return register_family(T5ReluFamily())


SMALL = ModelConfig(name="relu-t5", family="t5-relu", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                    num_encoder_layers=2, num_decoder_layers=2)


def test_the_form_decides_parameters_and_flops(registered):
    from trainers import models

    gated, relu = dataclasses.replace(SMALL, family="t5"), SMALL
    layers = gated.num_encoder_layers + gated.num_decoder_layers
    assert accounting.param_count(gated) - accounting.param_count(relu) == layers * gated.d_model * gated.d_ff
    assert accounting.param_count(relu) == models.param_count(models.param_shapes(relu))
    mlp = models.param_shapes(relu)["encoder"]["layers"]["mlp"]
    assert sorted(mlp) == ["wi", "wo"] and mlp["wi"].shape == (2, relu.d_model, relu.d_ff)
    # One projection fewer per layer: 2 FLOPs x 3 (forward and backward) per weight and token.
    li, lt = 256, 64
    fewer = 6.0 * gated.d_model * gated.d_ff * (gated.num_encoder_layers * li + gated.num_decoder_layers * lt)
    assert accounting.step_flops(gated, 1, li, lt) - accounting.step_flops(relu, 1, li, lt) == pytest.approx(fewer)


@pytest.mark.slow
def test_planner_memory_is_within_20_percent_of_xla(registered):
    """XLA's compiled memory analysis of the cell's train step (as `plan --compile` reads it)
    against the planner's estimate, which asks the family's form how much of the MLP a
    layer keeps; the gated forms' count would be far off for this one."""
    from trainers.aot import compile_cell

    cfg = dataclasses.replace(get_preset("tiny-1").model, family="t5-relu")
    cell = CellSpec(model=cfg, data=DataConfig(input_length=256, target_length=64),
                    optim=OptimConfig(batch_size=8, steps=2), mesh=MeshConfig())
    xla = compile_cell(cell)["xla_memory"]["per_device"]

    def planned(form: MLPForm) -> float:
        families.get_family("t5-relu").mlp = form
        return accounting.memory_per_device(cfg, cell.mesh, 8, 256, 64, remat=False)["total"]

    assert planned(RELU) == pytest.approx(xla, rel=0.2)
    assert planned(dataclasses.replace(RELU, saved_per_hidden=8)) > 1.2 * xla


@pytest.mark.slow
def test_hf_conversion_follows_the_form(registered, tmp_path):
    import jax

    from trainers import models
    from trainers.models import hf_export, hf_import

    params = models.init_params(SMALL, jax.random.PRNGKey(0))
    hf_cfg, tensors = hf_export.to_hf(SMALL, params)
    assert hf_cfg["feed_forward_proj"] == "relu"
    assert "encoder.block.0.layer.1.DenseReluDense.wi.weight" in tensors
    assert not any("wi_0" in name for name in tensors)
    hf_export.save_hf(tmp_path, SMALL, params)
    back_cfg, back = hf_import.from_hf(tmp_path)
    assert back_cfg.family == "t5-relu"
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), params, back))


@pytest.mark.slow
def test_transformers_computes_the_same_logits(registered, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax

    from trainers import models
    from trainers.models import hf_export, t5

    params = models.init_params(SMALL, jax.random.PRNGKey(1))
    hf_export.save_hf(tmp_path, SMALL, params)
    model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    rng = np.random.default_rng(0)
    ids, decoder_ids = rng.integers(3, 259, (2, 9)), rng.integers(3, 259, (2, 5))
    decoder_ids[:, 0] = 0
    with torch.no_grad():
        hf = model(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()
    assert np.abs(np.asarray(t5.forward(SMALL, params, ids, decoder_ids)) - hf).max() < 1e-4
