"""A decoder-only model saved as an MLflow pyfunc model: mlflow.pyfunc.load_model serves it, with
its signature and input example, and predict returns the greedy answers flanscale decodes."""

from __future__ import annotations

import jax
import pytest

from trainers import models
from trainers.spec import ModelConfig

DECODER = ModelConfig(name="pf-dec", family="decoder", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                      num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=1, tie_embeddings=True,
                      parallel_block=True)


@pytest.mark.slow
def test_a_decoder_loads_through_mlflow_and_answers_greedily(tmp_path, monkeypatch):
    import mlflow

    from trainers.data.tokenizer import ByteTokenizer
    from trainers.eval.decoding import TextGenerator
    from trainers.pyfunc_model import INPUT_EXAMPLE, save

    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    params = models.init_params(DECODER, jax.random.PRNGKey(1))
    models.save_pretrained(tmp_path / "base", DECODER, params)
    info = save(tmp_path / "base", tmp_path / "mlmodel", max_new_tokens=8)
    assert info["format"] == "flanscale"

    model = mlflow.pyfunc.load_model(str(tmp_path / "mlmodel"))
    assert [c.type.name for c in model.metadata.get_input_schema().inputs] == ["string"]
    assert model.metadata.saved_input_example_info["artifact_path"] == "input_example.json"
    prompts = [*INPUT_EXAMPLE, "2 + 3 ="]
    answers = model.predict(prompts)
    expected = TextGenerator(DECODER, params, ByteTokenizer(), max_new_tokens=8)(prompts)
    assert answers == [e[0] for e in expected] and len(answers) == 2
