"""README.md of an exported model: where it came from, how to load it, and (for flanscale's own
layout) every parameter with its shape and logical axes, so the files are usable without
flanscale's code."""

from __future__ import annotations

from typing import Any

from trainers.spec import ModelConfig

_DECODER_NOTE = """\
No Hugging Face class matches this block exactly, so it is not exported as one: each layer
normalises with a mean-subtracting, scale-only layer norm (no bias; Llama's RMS norm does not
subtract the mean, GPT-NeoX's and GPT-J's norms have biases), attention is multi-query
(`num_kv_heads` key/value heads) with rotary embeddings in rotate-half form, the feed-forward
is SwiGLU, and with `parallel_block` attention and feed-forward read the same normed input
and their outputs are summed (PaLM). With tied embeddings the logits are the embedding table
applied to the final hidden state scaled by d_model**-0.5.
"""

_T5_NOTE = """\
The same weights load in Hugging Face transformers: `flanscale export --format hf` writes them
as a T5ForConditionalGeneration (T5 v1.1, gated-GELU) checkpoint.
"""


def _architecture(cfg: ModelConfig) -> str:
    rows = [f"| {k} | {v} |" for k, v in (
        ("family", cfg.family), ("vocab_size", cfg.vocab_size), ("d_model", cfg.d_model), ("d_ff", cfg.d_ff),
        ("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads or cfg.num_heads), ("d_kv", cfg.d_kv),
        ("num_encoder_layers", cfg.num_encoder_layers), ("num_decoder_layers", cfg.num_decoder_layers),
        ("tie_embeddings", cfg.tie_embeddings), ("parallel_block", cfg.parallel_block),
        ("param_dtype", cfg.param_dtype))]
    return "| field | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def _param_table(cfg: ModelConfig, params: Any) -> str:
    import jax

    from trainers.models import logical_axes

    axes = dict(jax.tree_util.tree_flatten_with_path(logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))[0])
    lines = ["| parameter | shape | logical axes |", "|---|---|---|"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        lines.append(f"| `{name}` | {tuple(leaf.shape)} | {', '.join(axes.get(path, ()))} |")
    return "\n".join(lines) + "\n"


def flanscale_readme(cfg: ModelConfig, params: Any, provenance: str) -> str:
    family = "T5 v1.1 encoder-decoder" if cfg.family == "t5" else "PaLM-style decoder-only model"
    return f"""# {cfg.name}: flanscale model ({family})

Exported from {provenance}.

## Files

- `model.json`: the model's configuration (flanscale's `ModelConfig`).
- `params/`: the parameters, an orbax checkpoint of a nested dict of arrays (read it with
  `orbax.checkpoint.StandardCheckpointer().restore("params")`, or with
  `trainers.models.load_pretrained(DIR)` in flanscale).
- `data_config.json`: the data configuration; its `tokenizer` names the tokenizer
  (`byte`: UTF-8 byte + 3 with pad 0, eos 1, unk 2; otherwise `tokenizer.model`, a
  SentencePiece model with the same special ids).
- `tokenizer.model`: present for a SentencePiece tokenizer.

`flanscale eval --checkpoint DIR` evaluates it; a sweep finetunes from it with
`init_checkpoint: DIR`.

## Architecture

{_architecture(cfg)}
{_DECODER_NOTE if cfg.family != "t5" else _T5_NOTE}
## Parameters

{_param_table(cfg, params)}"""


def hf_readme(cfg: ModelConfig, provenance: str, files: list[str]) -> str:
    tokenizer = ("" if "tokenizer_config.json" in files else
                 "\nNo tokenizer files were written (the tokenizer was not found on this machine).\n")
    return f"""---
library_name: transformers
tags: [t5, flanscale]
---
# {cfg.name}

A T5 v1.1 (gated-GELU) model exported from {provenance}.

```python
from transformers import AutoTokenizer, T5ForConditionalGeneration

model = T5ForConditionalGeneration.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
ids = tokenizer(["Question: ...\\nAnswer:"], return_tensors="pt").input_ids
print(tokenizer.batch_decode(model.generate(ids, max_new_tokens=32), skip_special_tokens=True))
```
{tokenizer}
Files: {", ".join(f"`{f}`" for f in files)}.
"""
