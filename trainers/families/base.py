"""What a model family is, JAX-free: the planner sizes and costs models through it, and
trainers/models builds them through the names it gives.

A family answers for its own architecture: the parameter layout (which decides parameter
count and the optimizer state), its feed-forward form (trainers/families/mlp.py), the FLOPs
of a token and of a training step, what a layer keeps for the backward pass, the layout of
a packed batch, and where its flax module (which also decodes: prefill, decode_step,
option_logits), training loss and Hugging Face conversion live (as "module:attribute" names
that only trainers resolves, so importing a family never imports JAX).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from trainers.families.layouts import DecoderOnlyLayout, EncoderDecoderLayout
from trainers.families.mlp import SWIGLU, MLPForm
from trainers.spec import ModelConfig, UserError

ParamLayout = list[tuple[str, str, tuple[int, ...]]]  # (part, name, shape); part: embedding|encoder|decoder|head
# (query tokens, keys, encoder outputs a cross-attention reads) of one layer, per row.
LayerShape = tuple[int, int, int]


def kv_heads(cfg: ModelConfig) -> int:
    return cfg.num_kv_heads or cfg.num_heads


def attention_params(out: ParamLayout, cfg: ModelConfig, part: str, prefix: str) -> None:
    d, h, kv, dk = cfg.d_model, cfg.num_heads, kv_heads(cfg), cfg.d_kv
    out.append((part, f"{prefix}.query", (d, h, dk)))
    out.append((part, f"{prefix}.key", (d, kv, dk)))
    out.append((part, f"{prefix}.value", (d, kv, dk)))
    out.append((part, f"{prefix}.out", (h, dk, d)))


def attention_flops(cfg: ModelConfig, queries: int, keys: int) -> float:
    """QK^T and AV of one layer: 2 matmuls x 2 FLOPs per multiply-add over every (query,
    key) pair the kernel computes (masking does not skip work)."""
    return 4.0 * queries * keys * cfg.num_heads * cfg.d_kv


class Family(ABC):
    """One model family. Subclasses set the class attributes and implement the layout and
    FLOPs methods; the defaults are a decoder-only model's."""

    name: str = ""
    description: str = ""  # one line for model cards, e.g. "T5 v1.1 encoder-decoder"
    model: str = ""  # "module:Class" of the flax module built from a ModelConfig
    hf_import: str = ""  # "module:function": HF checkpoint dir -> (ModelConfig, params); "" = none
    hf_export: str = ""  # module with check_exportable / to_hf / save_hf; "" = none
    export_note: str = ""  # model-card paragraph on how else the weights can be used
    pretrain_objective: str = ""  # the objective `flanscale pretrain` trains base models with; "" = none
    batch_layout = DecoderOnlyLayout()
    # The feed-forward form: parameter layout, FLOPs, planner memory, flax layer, HF names.
    mlp: MLPForm = SWIGLU
    # "module:function" of the training loss, (logits, batch, z_loss) -> (cross-entropy sum,
    # z-loss sum, target tokens); the held-out loss is its cross-entropy.
    loss: str = "trainers.models.loss:next_token_loss"
    # c in the paper's c x N x tokens (Table 2; and pretraining compute of a catalog model):
    # 3 where a token passes through about half the parameters (encoder-decoders), else 6.
    flops_per_param_token: float = 6.0

    def validate(self, cfg: ModelConfig) -> None:
        """Family-specific checks, one UserError line naming the field."""

    def stacks(self, cfg: ModelConfig) -> dict[tuple[str, ...], int]:
        """Depth of each layer stack, by the parameter path of the module holding it (its
        layers are `layers_0`, `layers_1`, ... there, or one scanned `layers`)."""
        return {(): cfg.num_decoder_layers}

    @abstractmethod
    def param_layout(self, cfg: ModelConfig) -> ParamLayout:
        """Every parameter in the order the model creates it, with the shape it has in one
        layer (a scanned stack adds a leading `layers` axis, which changes no count)."""

    def split(self, parts: dict[str, int]) -> tuple[int, int]:
        """(encoder, decoder) parameters in the paper's FLOPs convention from the per-part sums."""
        return 0, parts["decoder"] + parts["embedding"] + parts["head"]

    def param_tokens(self, split: dict[str, int], input_tokens: float, target_tokens: float) -> float:
        """Sum over tokens of the parameters each passes through."""
        return split["total"] * (input_tokens + target_tokens)

    @abstractmethod
    def matmul_params_per_token(self, cfg: ModelConfig) -> dict[str, float]:
        """Parameters an input and a target token multiply by (no lookups, no norms)."""

    @abstractmethod
    def forward_flops_per_row(self, cfg: ModelConfig, input_length: int, target_length: int) -> float:
        """Matmul FLOPs of one packed row's forward pass, attention scores included."""

    def activation_layers(self, cfg: ModelConfig, input_length: int, target_length: int) -> tuple[list[LayerShape], int]:
        """Every layer's (queries, keys, cross keys) per row, and the positions that get logits."""
        length = input_length + target_length
        return [(length, length, 0)] * cfg.num_decoder_layers, length


class EncoderDecoderFamily(Family):
    """Defaults for a family whose inputs feed an encoder and targets a decoder."""

    batch_layout = EncoderDecoderLayout()
    flops_per_param_token = 3.0

    def stacks(self, cfg: ModelConfig) -> dict[tuple[str, ...], int]:
        return {("encoder",): cfg.num_encoder_layers, ("decoder",): cfg.num_decoder_layers}

    def split(self, parts: dict[str, int]) -> tuple[int, int]:
        # The shared input table goes with the encoder, the output layer with the decoder.
        return parts["encoder"] + parts["embedding"], parts["decoder"] + parts["head"]

    def param_tokens(self, split: dict[str, int], input_tokens: float, target_tokens: float) -> float:
        return split["encoder"] * input_tokens + split["decoder"] * target_tokens

    def activation_layers(self, cfg: ModelConfig, input_length: int, target_length: int) -> tuple[list[LayerShape], int]:
        layers = [(input_length, input_length, 0)] * cfg.num_encoder_layers
        layers += [(target_length, target_length, input_length)] * cfg.num_decoder_layers
        return layers, target_length


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)
