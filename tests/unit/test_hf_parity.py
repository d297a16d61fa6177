"""Our T5 v1.1 reproduces Hugging Face's T5ForConditionalGeneration from imported weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainers.spec import UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_model(untie: bool):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
    )
    model = transformers.T5ForConditionalGeneration(config)
    with torch.no_grad():
        # Random init leaves relative biases small; make them matter for the comparison.
        for stack in (model.encoder, model.decoder):
            rab = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
            rab.copy_(torch.randn_like(rab))
    if untie:
        # Fresh HF T5 models share lm_head with `shared`; v1.1 checkpoints have their own.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(100, 32) * 0.2)
    return model.eval()


def _batch():
    rng = np.random.default_rng(0)
    input_ids = rng.integers(2, 100, (3, 12)).astype(np.int64)
    attention_mask = np.ones_like(input_ids)
    for row, length in enumerate([12, 7, 3]):
        input_ids[row, length:] = 0
        attention_mask[row, length:] = 0
    decoder_input_ids = rng.integers(2, 100, (3, 6)).astype(np.int64)
    decoder_input_ids[:, 0] = 0
    return input_ids, attention_mask, decoder_input_ids


@pytest.mark.parametrize("untie,scan", [(True, True), (False, True), (True, False)],
                         ids=["untied-lm-head", "tied-lm-head", "unrolled-layers"])
def test_logits_and_encoder_match_hf(tmp_path, untie, scan):
    from trainers.models import t5

    model = _hf_model(untie)
    model.save_pretrained(tmp_path, safe_serialization=True)
    input_ids, attention_mask, decoder_input_ids = _batch()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
            decoder_input_ids=torch.tensor(decoder_input_ids),
        )
    cfg, params = t5.from_hf(tmp_path, scan_layers=scan)
    assert (cfg.d_model, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.vocab_size) == (32, 2, 2, 100)
    # Scanned: each side's layers stacked on a leading axis; unrolled: layers_0, layers_1.
    layer = params["decoder"]["layers"] if scan else params["decoder"]["layers_1"]
    assert cfg.scan_layers == scan and layer["cross_attention"]["query"].shape == ((2,) if scan else ()) + (32, 4, 8)

    logits = np.asarray(t5.forward(cfg, params, input_ids, decoder_input_ids, attention_mask))
    assert np.abs(logits - out.logits.numpy()).max() < 1e-4

    encoded = np.asarray(t5.encode(cfg, params, input_ids, attention_mask))
    real = attention_mask.astype(bool)  # HF's outputs at padded positions are not meaningful
    assert np.abs(encoded[real] - out.encoder_last_hidden_state.numpy()[real]).max() < 1e-4


def test_sharded_checkpoint_imports_the_same_params(tmp_path):
    import jax

    from trainers.models import t5

    model = _hf_model(untie=True)
    model.save_pretrained(tmp_path / "one", safe_serialization=True)
    model.save_pretrained(tmp_path / "many", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "many" / "model.safetensors.index.json").is_file()
    _, whole = t5.from_hf(tmp_path / "one")
    cfg, sharded = t5.from_hf(tmp_path / "many")
    assert jax.tree.all(jax.tree.map(np.array_equal, whole, sharded))
    bf16_cfg, bf16 = t5.from_hf(tmp_path / "one", param_dtype="bfloat16")
    assert bf16_cfg.param_dtype == "bfloat16" and {str(x.dtype) for x in jax.tree.leaves(bf16)} == {"bfloat16"}


def test_import_rejects_bad_checkpoints(tmp_path):
    from trainers.models import t5

    with pytest.raises(UserError, match="missing config.json"):
        t5.from_hf(tmp_path)
    model = _hf_model(untie=True)
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())

    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bart"}))
    with pytest.raises(UserError, match="model_type 'bart'"):
        t5.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "relu"}))
    with pytest.raises(UserError, match="gated-gelu"):
        t5.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "d_ff": 128}))
    with pytest.raises(UserError, match=r"DenseReluDense.wi_0.weight' has shape \(64, 32\)"):
        t5.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 1}))
    with pytest.raises(UserError, match="encoder.block.1"):
        t5.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="missing model.safetensors"):
        t5.from_hf(tmp_path)


def test_convert_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from orchestrator.cli import main
    from trainers import models
    from trainers.models import t5

    model = _hf_model(untie=True)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert main(["convert", "hf-t5", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    assert "params=" in capsys.readouterr().out
    cfg, params = models.load_pretrained(tmp_path / "out")
    input_ids, attention_mask, decoder_input_ids = _batch()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                    decoder_input_ids=torch.tensor(decoder_input_ids)).logits.numpy()
    logits = np.asarray(t5.forward(cfg, params, input_ids, decoder_input_ids, attention_mask))
    assert np.abs(logits - ref).max() < 1e-4

    # DST is never overwritten by accident; a bad SRC is one line, exit code 2.
    assert main(["convert", "hf-t5", str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", "hf-t5", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err
