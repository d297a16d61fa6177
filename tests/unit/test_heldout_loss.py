"""eval/loss: the same tokens for every cell, an exact cross-entropy, logged by every cell."""

import jax
import numpy as np
import pytest

from trainers import models
from trainers.data.packing import build_batch, truncate
from trainers.data.tokenizer import EOS_ID, load_tokenizer
from trainers.eval.heldout_loss import HeldoutLoss, loss_batches
from trainers.job import _evaluator, run_cell
from trainers.spec import CellSpec, DataConfig, EvalConfig, ModelConfig
from trainers.tracking import MemoryTracker

LI, LT = 64, 32
T5 = ModelConfig(name="t", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                 num_encoder_layers=1, num_decoder_layers=1)
DEC = ModelConfig(name="d", family="decoder", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                  num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=1, tie_embeddings=True,
                  parallel_block=True)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(DataConfig(tokenizer="byte"), tmp_path_factory.mktemp("home"))


def test_the_set_depends_on_nothing_a_cell_varies(tokenizer):
    a = loss_batches(tokenizer, "t5", LI, LT, per_group=4)
    b = loss_batches(tokenizer, "t5", LI, LT, per_group=4)
    assert set(a) == {"mc", "reasoning", "qa", "arith"}
    for g in a:
        for x, y in zip(a[g], b[g]):
            assert all(np.array_equal(x[k], y[k]) for k in x)
    params = models.init_params(T5, jax.random.PRNGKey(0), LI, LT)
    values = []
    for task_count, formats, seed in ((9, ("zs_opt",), 0), (282, ("fs_opt", "cot"), 3)):
        cell = CellSpec(model=T5, data=DataConfig(task_count=task_count, formats=formats, input_length=LI,
                                                  target_length=LT), seed=seed,
                        eval=EvalConfig(loss_examples=4))
        values.append(_evaluator(cell, T5, tokenizer)(params)[0])
    assert values[0] == values[1]
    assert set(values[0]) == {"eval/loss", "eval/loss/mc", "eval/loss/reasoning", "eval/loss/qa", "eval/loss/arith"}
    assert all(v > 0 for v in values[0].values())


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [T5, DEC], ids=["t5", "decoder"])
def test_packed_loss_equals_the_mean_over_single_examples(cfg, tokenizer):
    """Packing is exact (per-example masks), so the packed figure equals a token-weighted mean
    of one-example rows computed independently with a full forward pass."""
    from trainers.data.heldout import loss_set

    params = models.init_params(cfg, jax.random.PRNGKey(1), LI, LT)
    got = HeldoutLoss(cfg, tokenizer, LI, LT, per_group=3)(params)
    module = models.build(cfg)
    ce = n = 0.0
    for _, inputs, targets in loss_set(3):
        ex = truncate((tokenizer.encode(inputs) + [EOS_ID], tokenizer.encode(targets) + [EOS_ID]), cfg.family, LI, LT)
        batch = build_batch([[ex]], cfg.family, LI, LT)
        logits = np.asarray(module.apply({"params": params}, batch, deterministic=True), np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        tgt = batch["decoder_target_tokens"]
        w = batch["decoder_loss_weights"]
        ce += float(-(np.take_along_axis(logp, tgt[..., None], -1)[..., 0] * w).sum())
        n += float(w.sum())
    assert got["eval/loss"] == pytest.approx(ce / n, rel=1e-4)


@pytest.mark.slow
def test_a_base_model_cell_logs_eval_loss(tmp_path):
    memory = MemoryTracker()
    spec = {"model": {"name": "t", "vocab_size": 384, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16,
                      "num_encoder_layers": 1, "num_decoder_layers": 1},
            "data": {"task_count": 0, "input_length": LI, "target_length": LT},
            "optim": {"steps": 0}, "eval": {"loss_examples": 2}}
    result = run_cell(spec, home=str(tmp_path), extra_trackers=(memory,))
    assert result["status"] == "finished" and result["eval"]["eval/loss"] > 0
    assert memory.metrics["eval/loss"][0][0] == 0  # logged at step 0: the model was not trained
