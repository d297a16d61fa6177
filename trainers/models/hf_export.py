"""Export T5 v1.1 parameters as a Hugging Face checkpoint (config.json + model.safetensors).

The inverse of hf_import.py's mapping, so `from_hf(to_hf(params))` gives back the same
arrays and `T5ForConditionalGeneration.from_pretrained` computes the same logits:

  shared/embedding [V, E]                         -> shared.weight [V, E]
  .../{,self_,cross_}attention/query [E, H, D]    -> ...{SelfAttention,EncDecAttention}.q.weight [H*D, E]
  .../out [H, D, E]                               -> ... .o.weight [E, H*D]
  .../relpos_bias/rel_embedding [buckets, H]      -> block.0 ... relative_attention_bias.weight
  .../mlp/wi_0, wi_1 (or wi) [E, F], wo [F, E]    -> ... DenseReluDense.wi_0 / wi_1 (or wi) [F, E], wo [E, F]
  *_norm/scale, final_norm/scale                  -> layer_norm / final_layer_norm .weight
  lm_head/kernel [E, V]                           -> lm_head.weight [V, E]

The config says `tie_word_embeddings: false` (T5 v1.1's untied head, no d_model**-0.5
rescale before it). Tensors are written as float32, whatever the params' dtype. Scanned
params (a `layers` stack per side) are exported layer by layer like unrolled ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainers.families import family_of
from trainers.models.stacking import is_stacked, unstack_layers
from trainers.spec import ModelConfig, UserError

# config.json fields beyond the architecture: what transformers needs to generate with it.
_HF_FIXED = {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "is_encoder_decoder": True,
    "tie_word_embeddings": False,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    "use_cache": True,
    "torch_dtype": "float32",
}


def check_exportable(cfg: ModelConfig) -> None:
    """One line saying why a model has no Hugging Face T5 form, or nothing."""
    family = family_of(cfg)
    if family.hf_export != __name__:
        raise UserError(
            f"--format hf: model {cfg.name!r} is a {family.description} (family {family.name!r}), which no "
            "Hugging Face class matches exactly; use --format flanscale")
    if cfg.num_kv_heads not in (0, cfg.num_heads):
        raise UserError(f"--format hf: model {cfg.name!r} has num_kv_heads={cfg.num_kv_heads}; Hugging Face T5 "
                        f"needs one key/value head per query head ({cfg.num_heads}); use --format flanscale")
    if not family.mlp.hf_name:
        raise UserError(f"--format hf: model {cfg.name!r} has a {family.mlp.name} feed-forward, which Hugging Face "
                        "T5 has not; use --format flanscale")
    if cfg.tie_embeddings or cfg.parallel_block:
        raise UserError(f"--format hf: model {cfg.name!r} ties embeddings or uses parallel blocks, which T5 v1.1 "
                        "does not; use --format flanscale")


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_HF_FIXED,
        "feed_forward_proj": family_of(cfg).mlp.hf_name,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_ff": cfg.d_ff,
        "d_kv": cfg.d_kv,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
    }


def _f32(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _attention(out: dict, prefix: str, p: dict, cfg: ModelConfig) -> None:
    E, H, D = cfg.d_model, cfg.num_heads, cfg.d_kv
    for ours, hf_name in (("query", "q"), ("key", "k"), ("value", "v")):
        out[f"{prefix}.{hf_name}.weight"] = _f32(p[ours]).reshape(E, H * D).T  # [E, H, D] -> [H*D, E]
    out[f"{prefix}.o.weight"] = _f32(p["out"]).reshape(H * D, E).T  # [H, D, E] -> [E, H*D]


def _mlp(out: dict, prefix: str, p: dict, cfg: ModelConfig) -> None:
    for name in family_of(cfg).mlp.inputs + ("wo",):
        out[f"{prefix}.DenseReluDense.{name}.weight"] = _f32(p[name]).T


def _stack(out: dict, side: str, p: dict, cfg: ModelConfig) -> None:
    n = cfg.num_encoder_layers if side == "encoder" else cfg.num_decoder_layers
    out[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _f32(p["relpos_bias"]["rel_embedding"])
    out[f"{side}.final_layer_norm.weight"] = _f32(p["final_norm"]["scale"])
    for i in range(n):
        b, layer = f"{side}.block.{i}.layer", p[f"layers_{i}"]
        if side == "encoder":
            out[f"{b}.0.layer_norm.weight"] = _f32(layer["pre_attention_norm"]["scale"])
            _attention(out, f"{b}.0.SelfAttention", layer["attention"], cfg)
            out[f"{b}.1.layer_norm.weight"] = _f32(layer["pre_mlp_norm"]["scale"])
            _mlp(out, f"{b}.1", layer["mlp"], cfg)
        else:
            out[f"{b}.0.layer_norm.weight"] = _f32(layer["pre_self_attention_norm"]["scale"])
            _attention(out, f"{b}.0.SelfAttention", layer["self_attention"], cfg)
            out[f"{b}.1.layer_norm.weight"] = _f32(layer["pre_cross_attention_norm"]["scale"])
            _attention(out, f"{b}.1.EncDecAttention", layer["cross_attention"], cfg)
            out[f"{b}.2.layer_norm.weight"] = _f32(layer["pre_mlp_norm"]["scale"])
            _mlp(out, f"{b}.2", layer["mlp"], cfg)


def to_hf(cfg: ModelConfig, params: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json contents, tensors by Hugging Face name) of a T5 v1.1 model."""
    check_exportable(cfg)
    stacks = family_of(cfg).stacks(cfg)
    if is_stacked(params, stacks):
        params = unstack_layers(params, stacks)
    tensors: dict[str, np.ndarray] = {"shared.weight": _f32(params["shared"]["embedding"])}
    _stack(tensors, "encoder", params["encoder"], cfg)
    _stack(tensors, "decoder", params["decoder"], cfg)
    tensors["lm_head.weight"] = _f32(params["lm_head"]["kernel"]).T  # [E, V] -> [V, E]
    return hf_config(cfg), {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def save_hf(dst, cfg: ModelConfig, params: Any) -> list[str]:
    """Write config.json and model.safetensors into `dst` (which must exist); returns the file names."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file

    config, tensors = to_hf(cfg, params)
    dst = Path(dst)
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return ["config.json", "model.safetensors"]
