"""T5 v1.1 encoder-decoder (the Flan-T5 base models), JAX-free half; the module is
trainers/models/t5.py, Hugging Face conversion trainers/models/hf_import.py / hf_export.py."""

from __future__ import annotations

from trainers.families.base import (EncoderDecoderFamily, ParamLayout, attention_flops, attention_params, kv_heads,
                                    require)
from trainers.families.mlp import GATED_GELU
from trainers.spec import ModelConfig


class T5Family(EncoderDecoderFamily):
    name = "t5"
    description = "T5 v1.1 encoder-decoder"
    model = "trainers.models.t5:T5"
    mlp = GATED_GELU
    hf_import = "trainers.models.hf_import:from_hf"
    hf_export = "trainers.models.hf_export"
    @property
    def export_note(self) -> str:  # type: ignore[override]
        if not self.mlp.hf_name:  # no Hugging Face T5 has this feed-forward
            return ""
        return ("The same weights load in Hugging Face transformers: `flanscale export --format hf` writes them\n"
                f"as a T5ForConditionalGeneration (T5 v1.1 blocks, {self.mlp.name} feed-forward) checkpoint.\n")
    pretrain_objective = "span_corruption"

    def validate(self, cfg: ModelConfig) -> None:
        require(cfg.num_encoder_layers >= 1,
                f"model.num_encoder_layers: {cfg.num_encoder_layers} must be >= 1 for family t5")
        require(not cfg.tie_embeddings,
                "model.tie_embeddings: T5 v1.1 has untied embeddings; set it false for family t5")

    def param_layout(self, cfg: ModelConfig) -> ParamLayout:
        d, buckets = cfg.d_model, cfg.relative_attention_num_buckets
        out: ParamLayout = [("embedding", "token_embedder", (cfg.vocab_size, d))]
        # One relative-position table per stack, shared by its layers.
        out.append(("encoder", "encoder.relpos_bias", (buckets, cfg.num_heads)))
        for i in range(cfg.num_encoder_layers):
            p = f"encoder.layers_{i}"
            out.append(("encoder", f"{p}.pre_attention_norm", (d,)))
            attention_params(out, cfg, "encoder", f"{p}.attention")
            out.append(("encoder", f"{p}.pre_mlp_norm", (d,)))
            self.mlp.params(out, cfg, "encoder", f"{p}.mlp")
        out.append(("encoder", "encoder.final_norm", (d,)))
        out.append(("decoder", "decoder.relpos_bias", (buckets, cfg.num_heads)))
        for i in range(cfg.num_decoder_layers):
            p = f"decoder.layers_{i}"
            out.append(("decoder", f"{p}.pre_self_attention_norm", (d,)))
            attention_params(out, cfg, "decoder", f"{p}.self_attention")
            out.append(("decoder", f"{p}.pre_cross_attention_norm", (d,)))
            attention_params(out, cfg, "decoder", f"{p}.encoder_decoder_attention")
            out.append(("decoder", f"{p}.pre_mlp_norm", (d,)))
            self.mlp.params(out, cfg, "decoder", f"{p}.mlp")
        out.append(("decoder", "decoder.final_norm", (d,)))
        out.append(("head", "logits_dense", (d, cfg.vocab_size)))  # untied (validate)
        return out

    def matmul_params_per_token(self, cfg: ModelConfig) -> dict[str, float]:
        d, inner, kv_inner = cfg.d_model, cfg.num_heads * cfg.d_kv, kv_heads(cfg) * cfg.d_kv
        attn = 2 * d * inner + 2 * d * kv_inner
        mlp = self.mlp.matmul_params(cfg)
        cross_q_o = 2 * d * inner
        cross_kv = 2 * d * kv_inner  # applied to encoder outputs, once per decoder layer
        return {
            "input": cfg.num_encoder_layers * (attn + mlp) + cfg.num_decoder_layers * cross_kv,
            "target": cfg.num_decoder_layers * (attn + cross_q_o + mlp) + d * cfg.vocab_size,
        }

    def forward_flops_per_row(self, cfg: ModelConfig, input_length: int, target_length: int) -> float:
        per = self.matmul_params_per_token(cfg)
        flops = 2.0 * (per["input"] * input_length + per["target"] * target_length)
        flops += cfg.num_encoder_layers * attention_flops(cfg, input_length, input_length)
        flops += cfg.num_decoder_layers * (attention_flops(cfg, target_length, target_length)
                                           + attention_flops(cfg, target_length, input_length))
        return flops
