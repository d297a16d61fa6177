"""PaLM-style decoder-only model (the Flan-PaLM base models), JAX-free half; the module is
trainers/models/decoder.py. No Hugging Face class matches its block exactly, so it has no
HF conversion."""

from __future__ import annotations

from trainers.families.base import Family, ParamLayout, attention_flops, attention_params, kv_heads, require
from trainers.families.mlp import SWIGLU
from trainers.spec import ModelConfig


class DecoderFamily(Family):
    name = "decoder"
    description = "PaLM-style decoder-only model"
    model = "trainers.models.decoder:DecoderOnly"
    mlp = SWIGLU
    # T5's span corruption in the decoder-only layout: the corrupted text is the input, the
    # dropped spans the target (UL2's R-denoiser, as U-PaLM trains a decoder-only model).
    pretrain_objective = "span_corruption"
    export_note = """\
No Hugging Face class matches this block exactly, so it is not exported as one: each layer
normalises with a mean-subtracting, scale-only layer norm (no bias; Llama's RMS norm does not
subtract the mean, GPT-NeoX's and GPT-J's norms have biases), attention is multi-query
(`num_kv_heads` key/value heads) with rotary embeddings in rotate-half form, the feed-forward
is SwiGLU, and with `parallel_block` attention and feed-forward read the same normed input
and their outputs are summed (PaLM). With tied embeddings the logits are the embedding table
applied to the final hidden state scaled by d_model**-0.5.
"""

    def validate(self, cfg: ModelConfig) -> None:
        require(not cfg.num_encoder_layers,
                f"model.num_encoder_layers: {cfg.num_encoder_layers} must be 0 for family decoder")
        require(cfg.d_kv % 2 == 0, f"model.d_kv: {cfg.d_kv} must be even for rotary embeddings")

    def param_layout(self, cfg: ModelConfig) -> ParamLayout:
        d = cfg.d_model
        out: ParamLayout = [("embedding", "token_embedder", (cfg.vocab_size, d))]
        for i in range(cfg.num_decoder_layers):
            p = f"decoder.layers_{i}"
            out.append(("decoder", f"{p}.pre_norm", (d,)))  # parallel block: one norm feeds both
            attention_params(out, cfg, "decoder", f"{p}.attention")
            if not cfg.parallel_block:
                out.append(("decoder", f"{p}.pre_mlp_norm", (d,)))
            self.mlp.params(out, cfg, "decoder", f"{p}.mlp")
        out.append(("decoder", "decoder.final_norm", (d,)))
        if not cfg.tie_embeddings:
            out.append(("head", "logits_dense", (d, cfg.vocab_size)))
        return out

    def matmul_params_per_token(self, cfg: ModelConfig) -> dict[str, float]:
        d, inner, kv_inner = cfg.d_model, cfg.num_heads * cfg.d_kv, kv_heads(cfg) * cfg.d_kv
        per = cfg.num_decoder_layers * (2 * d * inner + 2 * d * kv_inner + self.mlp.matmul_params(cfg)) + d * cfg.vocab_size
        return {"input": per, "target": per}

    def forward_flops_per_row(self, cfg: ModelConfig, input_length: int, target_length: int) -> float:
        length = input_length + target_length
        per = self.matmul_params_per_token(cfg)["input"]
        return 2.0 * per * length + cfg.num_decoder_layers * attention_flops(cfg, length, length)
