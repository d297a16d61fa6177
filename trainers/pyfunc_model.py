"""A finetuned model as an MLflow model that MLflow's own tools load (the `python_function` flavour).

`python -m trainers.pyfunc_model SRC OUT` exports the model at SRC (any directory
trainers.export loads: a cell's checkpoints, a base model, a Hugging Face T5 directory) as
trainers.export writes it, and saves OUT as an MLflow model around that export: MLmodel,
a signature (a list of prompts in, a list of answers out), an input example and the export
as the model's artifact. `mlflow.pyfunc.load_model(OUT or "models:/NAME/VERSION")` gives a
model whose `predict(["question ..."])` returns the model's greedy answers, decoded with the
tokenizer the model was trained with; nothing is downloaded. The model registry
(`flanscale sweep run --register-models`) registers these.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from trainers.export import FORMATS, default_format, export, load, peek_config

ARTIFACT = "model"  # the export, inside the MLflow model's artifacts
MAX_NEW_TOKENS = 64
# MLflow suggests type hints on predict when a model class is defined; they would make it run
# the model at save time (see FlanscaleModel.predict).
warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
INPUT_EXAMPLE = ["Question: What is the capital of France?\nAnswer:"]


class FlanscaleModel(mlflow.pyfunc.PythonModel):
    """Prompts in, greedy continuations out, with JAX on the local device."""

    def load_context(self, context: Any) -> None:
        from trainers.data.tokenizer import load_tokenizer
        from trainers.eval.decoding import TextGenerator
        from trainers.home import flanscale_home

        loaded = load(context.artifacts[ARTIFACT])
        tokenizer = load_tokenizer(loaded.data, flanscale_home(), vocab_size=loaded.model.vocab_size)
        config = context.model_config or {}
        self._generate = TextGenerator(loaded.model, loaded.params, tokenizer,
                                       max_new_tokens=int(config.get("max_new_tokens", MAX_NEW_TOKENS)),
                                       batch_size=int(config.get("batch_size", 8)))

    # No type hints on purpose: MLflow would run the model at save time to check them; the
    # signature (one string column) is given, and MLflow hands the prompts in as its column.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [samples[0] for samples in self._generate(_prompts(model_input))]


def _prompts(model_input: Any) -> list[str]:
    """The prompts of a predict call: a DataFrame's first column, a list, or one string."""
    if hasattr(model_input, "iloc"):
        column = model_input.iloc[:, 0] if getattr(model_input, "ndim", 1) == 2 else model_input
        return [str(v) for v in column.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(v) for v in model_input]


def save(src: str | Path, out: str | Path, fmt: str = "auto", max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Export SRC and save OUT as an MLflow pyfunc model around it -> {format, files, step}."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    # The class by its module's name, also when this runs as __main__: MLflow pickles the
    # model object, and the loader imports the class from this package.
    from trainers.pyfunc_model import FlanscaleModel as Model

    _, cfg = peek_config(src)
    fmt = default_format(cfg) if fmt == "auto" else fmt
    loaded = load(src)
    with tempfile.TemporaryDirectory() as tmp:
        files = export(loaded, Path(tmp) / ARTIFACT, fmt)
        signature = ModelSignature(inputs=Schema([ColSpec(DataType.string)]),
                                   outputs=Schema([ColSpec(DataType.string)]))
        mlflow.pyfunc.save_model(
            str(out), python_model=Model(), artifacts={ARTIFACT: str(Path(tmp) / ARTIFACT)},
            signature=signature, input_example=INPUT_EXAMPLE,
            model_config={"max_new_tokens": max_new_tokens, "batch_size": 8},
            # This package and what it runs on, as installed here; inferring them would load the model.
            pip_requirements=_requirements(),
        )
    return {"format": fmt, "files": files, "step": loaded.step}


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("flanscale", "mlflow", "jax", "flax", "numpy", "sentencepiece"):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m trainers.pyfunc_model SRC OUT [--format F]`: prints {format, files, step} as JSON."""
    import argparse

    from trainers.spec import UserError

    p = argparse.ArgumentParser(prog="python -m trainers.pyfunc_model")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--format", choices=FORMATS + ("auto",), default="auto")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    args = p.parse_args(argv)
    try:
        info = save(args.src, args.out, args.format, args.max_new_tokens)
    except UserError as e:
        print(f"flanscale: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
