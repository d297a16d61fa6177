"""Import Hugging Face T5 v1.1 / Flan-T5 checkpoints (config.json + safetensors).

Reads the weights with safetensors' numpy backend (no torch at run time), one tensor at a
time, and maps HF names to this package's parameter tree:

  shared.weight [V, E]                                -> shared/embedding
  {enc,dec}oder.block.N.layer.0.SelfAttention.q [H*D, E] -> .../layers_N/{,self_}attention/query [E, H, D]
  ... .o.weight [E, H*D]                               -> .../out [H, D, E]
  ... block.0 ... relative_attention_bias [buckets, H] -> .../relpos_bias/rel_embedding
  ... DenseReluDense.wi_0 / wi_1 (or wi) [F, E], wo [E, F] -> .../mlp/wi_0, wi_1 (or wi) [E, F], wo [F, E]
  ... layer_norm / final_layer_norm                    -> *_norm/scale
  lm_head.weight [V, E]                                -> lm_head/kernel [E, V]

A checkpoint whose output layer is tied to `shared` (and possibly rescaled by d_model**-0.5
before it, as T5 1.0 did) is imported exactly by folding the tie and the scale into an
untied lm_head kernel. With `scan_layers` (the default) each side's `layers_N` are stacked
into one `layers` subtree with a leading layers axis, the scanned model's layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainers import families
from trainers.families import family_of
from trainers.models.stacking import stack_layers
from trainers.spec import ModelConfig, UserError

_TIED_INPUTS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def read_hf_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: missing config.json (expected a Hugging Face T5 checkpoint directory)")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if hf.get("model_type") != "t5":
        raise UserError(f"{cfg_file}: model_type {hf.get('model_type')!r} is not supported; allowed: 't5'")
    hf_family(hf, cfg_file)  # a feed-forward form no registered family has is refused here
    return hf


def hf_family(hf: dict, cfg_file: Path | str = "config.json") -> str:
    """The registered family this converter imports, whose feed-forward form is the
    checkpoint's `feed_forward_proj` (T5 v1.1: "gated-gelu")."""
    proj = hf.get("feed_forward_proj", "relu")
    able = {f.mlp.hf_name: f.name for f in families.FAMILIES if f.hf_import == f"{__name__}:from_hf" and f.mlp.hf_name}
    if proj not in able:
        raise UserError(f"{cfg_file}: feed_forward_proj {proj!r} is not a registered family's; "
                        f"allowed: {', '.join(map(repr, able))}")
    return able[proj]


def config_from_hf(hf: dict, name: str, param_dtype: str = "float32", scan_layers: bool = True) -> ModelConfig:
    num_layers = int(hf["num_layers"])
    return ModelConfig(
        name=name,
        family=hf_family(hf),
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["d_model"]),
        d_ff=int(hf["d_ff"]),
        num_heads=int(hf["num_heads"]),
        d_kv=int(hf["d_kv"]),
        num_kv_heads=0,
        num_encoder_layers=num_layers,
        num_decoder_layers=int(hf.get("num_decoder_layers") or num_layers),
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        tie_embeddings=False,
        parallel_block=False,
        dropout_rate=float(hf.get("dropout_rate", 0.0)),
        param_dtype=param_dtype,
        dtype=param_dtype,
        scan_layers=scan_layers,
    )


def _scales_decoder_output(hf: dict) -> bool:
    # HF's rule: an explicit flag (newer configs) or else "tie_word_embeddings is not False".
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


class _Tensors:
    """Lazy access to the tensors of a single-file or sharded safetensors checkpoint."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise UserError(f"{path}: missing model.safetensors (or model.safetensors.index.json)")
        self.where: dict[str, object] = {}
        self._handles = []
        for fname in files:
            if not (path / fname).is_file():
                raise UserError(f"{path}: shard {fname} named in model.safetensors.index.json is missing")
            try:
                handle = safe_open(str(path / fname), framework="np")
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise UserError(f"{path / fname}: not a readable safetensors file ({e})") from None
            self._handles.append(handle)
            for key in handle.keys():
                self.where[key] = handle
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.where:
            raise UserError(f"checkpoint: missing tensor {key!r}")
        value = self.where[key].get_tensor(key)
        if tuple(value.shape) != tuple(shape):
            raise UserError(f"checkpoint: tensor {key!r} has shape {tuple(value.shape)}, config implies {tuple(shape)}")
        self.used.add(key)
        return value


def _attention(t: _Tensors, prefix: str, cfg: ModelConfig, dtype) -> dict:
    E, H, D = cfg.d_model, cfg.num_heads, cfg.d_kv
    out = {}
    for hf_name, ours in (("q", "query"), ("k", "key"), ("v", "value")):
        w = t.get(f"{prefix}.{hf_name}.weight", (H * D, E))
        out[ours] = w.T.reshape(E, H, D).astype(dtype)  # [H*D, E] -> [E, H, D]
    out["out"] = t.get(f"{prefix}.o.weight", (E, H * D)).T.reshape(H, D, E).astype(dtype)
    return out


def _mlp(t: _Tensors, prefix: str, cfg: ModelConfig, dtype) -> dict:
    E, F = cfg.d_model, cfg.d_ff
    out = {name: t.get(f"{prefix}.DenseReluDense.{name}.weight", (F, E)).T.astype(dtype)
           for name in family_of(cfg).mlp.inputs}
    out["wo"] = t.get(f"{prefix}.DenseReluDense.wo.weight", (E, F)).T.astype(dtype)
    return out


def _norm(t: _Tensors, key: str, cfg: ModelConfig, dtype) -> dict:
    return {"scale": t.get(key, (cfg.d_model,)).astype(dtype)}


def _stack(t: _Tensors, side: str, cfg: ModelConfig, dtype) -> dict:
    n = cfg.num_encoder_layers if side == "encoder" else cfg.num_decoder_layers
    stack = {
        "relpos_bias": {"rel_embedding": t.get(
            f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (cfg.relative_attention_num_buckets, cfg.num_heads),
        ).astype(dtype)},
        "final_norm": _norm(t, f"{side}.final_layer_norm.weight", cfg, dtype),
    }
    for i in range(n):
        b = f"{side}.block.{i}.layer"
        if side == "encoder":
            stack[f"layers_{i}"] = {
                "pre_attention_norm": _norm(t, f"{b}.0.layer_norm.weight", cfg, dtype),
                "attention": _attention(t, f"{b}.0.SelfAttention", cfg, dtype),
                "pre_mlp_norm": _norm(t, f"{b}.1.layer_norm.weight", cfg, dtype),
                "mlp": _mlp(t, f"{b}.1", cfg, dtype),
            }
        else:
            stack[f"layers_{i}"] = {
                "pre_self_attention_norm": _norm(t, f"{b}.0.layer_norm.weight", cfg, dtype),
                "self_attention": _attention(t, f"{b}.0.SelfAttention", cfg, dtype),
                "pre_cross_attention_norm": _norm(t, f"{b}.1.layer_norm.weight", cfg, dtype),
                "cross_attention": _attention(t, f"{b}.1.EncDecAttention", cfg, dtype),
                "pre_mlp_norm": _norm(t, f"{b}.2.layer_norm.weight", cfg, dtype),
                "mlp": _mlp(t, f"{b}.2", cfg, dtype),
            }
    return stack


def from_hf(path, param_dtype: str = "float32", scan_layers: bool = True):
    """Local HF T5 v1.1 directory -> (ModelConfig, params as numpy arrays)."""
    from trainers.models.layers import dtype_of

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (expected a Hugging Face T5 checkpoint directory)")
    hf = read_hf_config(path)
    try:
        cfg = config_from_hf(hf, name=path.absolute().name, param_dtype=param_dtype, scan_layers=scan_layers)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path / 'config.json'}: missing or invalid field {e}") from None
    dtype = np.dtype(dtype_of(param_dtype))
    t = _Tensors(path)
    E, V = cfg.d_model, cfg.vocab_size
    shared = t.get("shared.weight", (V, E))
    lm = t.get("lm_head.weight", (V, E)) if "lm_head.weight" in t else shared
    lm_kernel = lm.T.astype(np.float32)
    if _scales_decoder_output(hf):
        lm_kernel = lm_kernel * (E ** -0.5)  # a linear rescale before lm_head folds into it
    params = {
        "shared": {"embedding": shared.astype(dtype)},
        "encoder": _stack(t, "encoder", cfg, dtype),
        "decoder": _stack(t, "decoder", cfg, dtype),
        "lm_head": {"kernel": lm_kernel.astype(dtype)},
    }
    unexpected = sorted(set(t.where) - t.used - set(_TIED_INPUTS))
    if unexpected:
        raise UserError(
            f"{path}: tensor {unexpected[0]!r} is not part of a T5 v1.1 model with the shapes in config.json "
            f"({len(unexpected)} unexpected tensor(s))"
        )
    if scan_layers:
        params = stack_layers(params, family_of(cfg).stacks(cfg))
    return cfg, params
