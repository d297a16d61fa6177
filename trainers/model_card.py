"""README.md of an exported model: where it came from, how to load it, and (for flanscale's own
layout) every parameter with its shape and logical axes, so the files are usable without
flanscale's code."""

from __future__ import annotations

from typing import Any

from trainers.families import family_of
from trainers.spec import ModelConfig


def _architecture(cfg: ModelConfig) -> str:
    rows = [f"| {k} | {v} |" for k, v in (
        ("family", cfg.family), ("vocab_size", cfg.vocab_size), ("d_model", cfg.d_model), ("d_ff", cfg.d_ff),
        ("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads or cfg.num_heads), ("d_kv", cfg.d_kv),
        ("num_encoder_layers", cfg.num_encoder_layers), ("num_decoder_layers", cfg.num_decoder_layers),
        ("tie_embeddings", cfg.tie_embeddings), ("parallel_block", cfg.parallel_block),
        ("param_dtype", cfg.param_dtype), ("scan_layers", cfg.scan_layers))]
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
    family = family_of(cfg)
    return f"""# {cfg.name}: flanscale model ({family.description})

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
{family.export_note}
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
