"""`flanscale export`: a T5 model as a Hugging Face checkpoint that transformers loads with the
same logits and greedy tokens and the same tokenizer ids; decoder models in flanscale's own
layout; one-line errors for what cannot be exported or found."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from orchestrator import cli
from trainers import models
from trainers.data.tokenizer import EOS_ID, ByteTokenizer, load_spm, train_spm
from trainers.export import Loaded, export, load
from trainers.spec import DataConfig, ModelConfig, UserError

T5 = ModelConfig(name="exp-t5", family="t5", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                 num_encoder_layers=2, num_decoder_layers=2)
DECODER = ModelConfig(name="exp-dec", family="decoder", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                      num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=1, tie_embeddings=True,
                      parallel_block=True)
TEXTS = ["Question: 2 + 3 = ?\nAnswer:", "Übersetze: café, naïve — 東京", "a  b\tc"]


def _t5_params():
    params = models.init_params(T5, jax.random.PRNGKey(3))
    # Sharper logits than a fresh init gives, so greedy choices are never near-ties.
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 8.0
    return params


def _cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _batch(tokenizer, texts):
    rows = [tokenizer.encode(t)[:40] + [EOS_ID] for t in texts]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, (ids != 0).astype(np.int64)


def _flanscale_greedy(cfg, params, ids, n):
    import jax.numpy as jnp

    from trainers.eval.decoding import decode_loop

    state = models.prefill(cfg, params, ids.astype(np.int32), n)
    step = lambda s, t: models.decode_step(cfg, params, s, t)  # noqa: E731
    first = jnp.zeros((ids.shape[0],), jnp.int32)
    return np.asarray(decode_loop(step, state, first, jax.random.PRNGKey(0), max_new_tokens=n))


@pytest.mark.slow
def test_t5_export_loads_in_transformers_with_the_same_logits_tokens_and_tokenizer(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from trainers.models import t5

    params = _t5_params()
    files = export(Loaded("base", tmp_path, T5, params, DataConfig(tokenizer="byte", input_length=64)),
                   tmp_path / "hf", "hf")
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"} <= set(files)

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = ByteTokenizer()
    for text in TEXTS:  # ByT5's ids are flanscale's byte ids, EOS appended as flanscale's prompts have it
        assert tokenizer(text).input_ids == ours.encode(text) + [EOS_ID]
    model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()

    ids, mask = _batch(ours, TEXTS)
    decoder_ids = np.random.default_rng(0).integers(3, 259, (len(TEXTS), 7))
    decoder_ids[:, 0] = 0
    with torch.no_grad():
        hf_logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()
    logits = np.asarray(t5.forward(T5, params, ids, decoder_ids, mask))
    assert np.abs(logits - hf_logits).max() < 1e-4

    n = 12
    with torch.no_grad():
        generated = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
                                   do_sample=False, num_beams=1).numpy()[:, 1:]  # drop the start token 0
    hf_tokens = np.zeros((len(TEXTS), n), np.int64)
    hf_tokens[:, : generated.shape[1]] = generated
    assert (_flanscale_greedy(T5, params, ids, n) == hf_tokens).all()

    # And back: importing the export gives the exported arrays.
    cfg, again = t5.from_hf(tmp_path / "hf")
    assert (cfg.d_model, cfg.num_encoder_layers, cfg.vocab_size) == (32, 2, 384)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params, again))


@pytest.mark.slow
def test_a_sentencepiece_tokenizer_exports_as_spiece_model_with_the_same_ids(tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    sentences = [f"Question {i}: what is {i} plus {i + 1}? Answer: {2 * i + 1}. Translate 'café {i}'." for i in range(300)]
    model_file = tmp_path / "tok.model"
    model_file.write_bytes(train_spm(sentences, 160))
    ours = load_spm(model_file)
    export(Loaded("base", tmp_path, T5, _t5_params(), DataConfig(tokenizer=str(model_file))), tmp_path / "hf", "hf")
    assert (tmp_path / "hf" / "spiece.model").read_bytes() == model_file.read_bytes()
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ["Question 7: what is 7 plus 8?\nAnswer:", "Translate 'café 3'.", "what is  12 plus 13"]:
        assert hf(text).input_ids == ours.encode(text) + [EOS_ID], text


@pytest.mark.slow
def test_decoder_exports_flanscale_layout_and_refuses_hf(tmp_path, capsys):
    params = models.init_params(DECODER, jax.random.PRNGKey(1))
    src = models.save_pretrained(tmp_path / "base", DECODER, params)

    code, out, err = _cli(["export", str(src), "--format", "hf", "--out", str(tmp_path / "hf")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no Hugging Face class" in err and "--format flanscale" in err
    assert not (tmp_path / "hf").exists()

    code, out, err = _cli(["export", str(src), "--out", str(tmp_path / "own")], capsys)
    assert code == 0, err
    assert "as flanscale" in out
    readme = (tmp_path / "own" / "README.md").read_text()
    assert "No Hugging Face class matches this block exactly" in readme
    assert "`layers/attention/query`" in readme and "(1, 32, 2, 16)" in readme and "layers, embed, heads, kv" in readme
    loaded = load(tmp_path / "own")
    assert loaded.kind == "base" and loaded.model == DECODER and loaded.data.tokenizer == "byte"
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params, loaded.params))

    # An existing output is never overwritten by accident.
    code, out, err = _cli(["export", str(src), "--out", str(tmp_path / "own")], capsys)
    assert code == 2 and "--force" in err and err.count("\n") == 1


def test_bad_sources_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    (tmp_path / "home" / "checkpoints" / "0123456789ab" / "5").mkdir(parents=True)  # a step, no cell.json
    (tmp_path / "home" / "checkpoints" / "0123ffffffff").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(tmp_path / "empty")], "not a model checkpoint"),
        (["fedcba987654"], "neither a directory nor the key of a cell with checkpoints under"),
        (["0123"], "matches 2 cell keys"),
        (["0123456789ab"], "no cell.json beside the checkpoints"),
    ]
    for argv, needle in cases:
        code, out, err = _cli(["export", *argv, "--out", str(tmp_path / "out")], capsys)
        assert code == 2 and err.count("\n") == 1 and needle in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_hf_export_refuses_what_t5_cannot_hold():
    import dataclasses

    from trainers.models.hf_export import check_exportable

    check_exportable(T5)
    with pytest.raises(UserError, match="num_kv_heads=1"):
        check_exportable(dataclasses.replace(T5, num_kv_heads=1))
    with pytest.raises(UserError, match="no Hugging Face class matches exactly"):
        check_exportable(DECODER)


def test_kind_of_names_each_layout(tmp_path):
    from trainers.export import kind_of

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.json").write_text("{}")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "cell" / "20").mkdir(parents=True)
    assert [kind_of(tmp_path / k) for k in ("base", "hf", "cell")] == ["base", "hf", "cell"]
    with pytest.raises(UserError, match="not a directory"):
        kind_of(tmp_path / "base" / "model.json")
