"""Parameters, FLOPs and memory of a model, computed from its ModelConfig alone.

Pure Python (stdlib only): the planner uses it to size a whole sweep without touching JAX,
and the trainer uses it for the paper's FLOPs accounting and for MFU. The parameter layout
here is the one trainers/models builds (tests/unit/test_param_count.py compares both for
every preset).

Conventions
- `train_flops` follows the paper (Appendix E): 6 FLOPs per parameter a token passes through;
  an input token passes through the encoder, a target token through the decoder.
- `param_count_split` puts the (shared) input embedding table with the encoder and the untied
  output layer with the decoder, so N_enc + N_dec = N and N_enc ~ N_dec ~ N/2 as the paper
  assumes. Decoder-only models put everything in the decoder.
- `paper_flops` is the coarser convention of the paper's Table 2 (c x N_nominal x tokens),
  kept beside the physical figures so the table can be reproduced to the digit.
- `step_flops` is the analytic count of what one optimizer step executes (matmuls including
  attention scores over the full packed length, forward + backward = 3x forward), which is
  what MFU is measured against. It excludes embedding lookups and rematerialisation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from trainers.families import family_of
from trainers.spec import MeshConfig, ModelConfig, UserError, did_you_mean

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3


# ---------------------------------------------------------------------------------------------
# Accelerators
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accelerator:
    """One kind of device. Figures are public vendor peaks (dense, no sparsity) and
    on-demand list prices in USD per device-hour (rounded; a sweep spec can override)."""

    name: str
    memory_gib: float  # memory per device (HBM; for "cpu" the share of host RAM one device may use)
    peak_bf16_flops: float  # per device
    peak_fp32_flops: float  # per device
    chips_per_host: int  # devices driven by one host (one JAX process) in multi-host slices
    slice_sizes: tuple[int, ...]  # device counts that can be allocated as one slice/job
    price_per_device_hour: float
    kind: str  # "cpu" | "gpu" | "tpu"
    max_single_host_chips: int = 0  # largest single-host slice (0 = chips_per_host)

    def hosts(self, devices: int) -> int:
        single = self.max_single_host_chips or self.chips_per_host
        if devices <= single:
            return 1
        return math.ceil(devices / self.chips_per_host)


def _pow2(lo: int, hi: int) -> tuple[int, ...]:
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 2
    return tuple(out)


# TPUs have no published fp32 matmul peak; XLA runs fp32 matmuls at "highest" precision as
# several bf16 passes, so fp32 is taken as a third of bf16 (the bf16_3x algorithm).
# "cpu": XLA's CPU client is one device that spans every core of the host, so its peak is the
# host's (see host_cpu_peak_flops; bf16 is not faster on most CPUs); 4 GiB of RAM per device.
def host_cpu_peak_flops(cpuinfo: str | None = None, cores: int | None = None) -> float:
    """fp32 FLOP/s of this host's cores: cores x clock x FLOPs per cycle per core.

    FLOPs per cycle from the widest vector FMA the CPU reports (two FMA units: AVX-512 64,
    AVX2+FMA 32, otherwise SSE 8). No library reports a CPU's peak, so it is derived here
    from /proc/cpuinfo; where that is unreadable, 100 GFLOP/s per core is assumed.
    """
    import os

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return cores * 1.0e11
    mhz = flags = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    if not mhz or flags is None:
        return cores * 1.0e11
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    return cores * mhz * 1e6 * per_cycle


_HOST_CPU_PEAK = host_cpu_peak_flops()

ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in (
        Accelerator("cpu", 4.0, _HOST_CPU_PEAK, _HOST_CPU_PEAK, 8, (1, 2, 4, 8), 0.05, "cpu"),
        Accelerator("a100-40g", 40.0, 312e12, 19.5e12, 8, (1, 2, 4) + _pow2(8, 4096), 3.67, "gpu"),
        Accelerator("a100-80g", 80.0, 312e12, 19.5e12, 8, (1, 2, 4) + _pow2(8, 4096), 5.07, "gpu"),
        Accelerator("h100-80g", 80.0, 989e12, 67e12, 8, (1, 2, 4) + _pow2(8, 4096), 11.06, "gpu"),
        Accelerator("h200-141g", 141.0, 989e12, 67e12, 8, (1, 2, 4) + _pow2(8, 4096), 10.60, "gpu"),
        Accelerator("tpu-v4", 32.0, 275e12, 275e12 / 3, 4, _pow2(4, 4096), 3.22, "tpu"),
        Accelerator("tpu-v5e", 16.0, 197e12, 197e12 / 3, 4, (1,) + _pow2(4, 256), 1.20, "tpu", 8),
        Accelerator("tpu-v5p", 95.0, 459e12, 459e12 / 3, 4, _pow2(4, 4096), 4.20, "tpu"),
        Accelerator("tpu-v6e", 32.0, 918e12, 918e12 / 3, 4, (1,) + _pow2(4, 256), 2.70, "tpu", 8),
    )
}


def get_accelerator(name: str) -> Accelerator:
    if name not in ACCELERATORS:
        raise UserError(f"accelerator: unknown {name!r}{did_you_mean(name, ACCELERATORS)}; allowed: {', '.join(ACCELERATORS)}")
    return ACCELERATORS[name]


def peak_flops(accelerator: str, dtype: str) -> float:
    """Peak FLOP/s of one device for matmuls in `dtype` (bf16/fp16 share the bf16 peak)."""
    acc = get_accelerator(accelerator)
    return acc.peak_fp32_flops if dtype == "float32" else acc.peak_bf16_flops


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def param_layout(cfg: ModelConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """(part, name, shape) of every parameter, part in {"embedding", "encoder", "decoder", "head"}.

    Shapes are those trainers/models creates (attention kernels keep their head axis:
    [d_model, heads, d_kv] and [heads, d_kv, d_model]), which decides how Adafactor factors them.
    """
    return list(_param_shapes(cfg))


@functools.lru_cache(maxsize=256)  # ModelConfig is frozen; the planner asks many times per model
def _param_shapes(cfg: ModelConfig) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    return tuple(family_of(cfg).param_layout(cfg))


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def param_count(cfg: ModelConfig) -> int:
    return sum(_size(s) for _, _, s in _param_shapes(cfg))


def param_count_split(cfg: ModelConfig) -> dict[str, int]:
    """encoder/decoder parameters in the paper's FLOPs convention (see module doc), the
    embedding tables among them, and the total (= encoder + decoder)."""
    parts = {"embedding": 0, "encoder": 0, "decoder": 0, "head": 0}
    for part, _, shape in _param_shapes(cfg):
        parts[part] += _size(shape)
    enc, dec = family_of(cfg).split(parts)
    return {
        "encoder": enc,
        "decoder": dec,
        "embedding": parts["embedding"] + parts["head"],
        "total": enc + dec,
    }


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def train_flops(cfg: ModelConfig, input_tokens: float, target_tokens: float) -> float:
    """Training compute in the paper's convention (6 FLOPs per parameter per token)."""
    return 6.0 * family_of(cfg).param_tokens(param_count_split(cfg), input_tokens, target_tokens)


def pretrain_flops(cfg: ModelConfig, tokens: float) -> float:
    """Compute that made a base model from `tokens` pretraining tokens. For encoder-decoders
    the paper's shorthand applies (each token passes through about half the parameters:
    3 x N x tokens); decoder-only models pay 6 x N x tokens."""
    n = param_count(cfg)
    return family_of(cfg).flops_per_param_token * n * tokens


def measured_pretrain_flops(checkpoint: str) -> float:
    """The compute `flanscale pretrain` recorded beside a base checkpoint (its pretrain.json),
    or 0.0 where the checkpoint carries no such record."""
    return _pretrain_record(checkpoint, "flops")


def measured_pretrain_tokens(checkpoint: str) -> float:
    """The tokens `flanscale pretrain` recorded beside a base checkpoint, or 0.0 where none."""
    return _pretrain_record(checkpoint, "tokens")


def _pretrain_record(checkpoint: str, key: str) -> float:
    import json
    from pathlib import Path

    meta = Path(checkpoint) / "pretrain.json"
    if not meta.is_file():
        return 0.0
    try:
        return float(json.loads(meta.read_text()).get(key, 0.0))
    except (ValueError, AttributeError, TypeError):  # JSONDecodeError is a ValueError
        raise UserError(f"{meta}: not a valid pretrain.json (expected {{\"{key}\": <number>}})") from None


# The paper's Table 2 counts compute more coarsely than train_flops: c x N x tokens with
# c = 3 for encoder-decoders and 6 for decoder-only models, for pretraining and finetuning
# alike, N the size the paper names a model by (the original T5 sizes, not the v1.1
# checkpoints' exact counts) and every packed position a token, padding included. This
# reproduces the table's cells; the physical figures above stay what MFU, hours and cost use.
# preset name -> (N the paper uses, pretraining tokens the paper uses)
PAPER_TABLE2_BASIS: dict[str, tuple[float, float]] = {
    "t5-small": (60e6, 1e12), "t5-base": (220e6, 1e12), "t5-large": (770e6, 1e12),
    "t5-xl": (3e9, 1e12), "t5-xxl": (11e9, 1e12),
    "palm-8b": (8e9, 780e9), "palm-62b": (62e9, 780e9), "palm-540b": (540e9, 780e9),
    "cont-palm-62b": (62e9, 1.3e12),
    # U-PaLM: PaLM 540B's pretraining plus about 0.1% more compute (UL2R).
    "u-palm-540b": (540e9, 780e9 * 1.001),
}


def paper_flops(cfg: ModelConfig, finetune_positions: float, pretrain_tokens: float | None = None,
                paper_basis: bool = True) -> dict[str, float | None]:
    """Pretraining and finetuning compute in the paper's Table 2 convention, and their ratio.

    `finetune_positions`: steps x batch x (input + target length). `pretrain_tokens`
    overrides the paper's pretraining tokens (a spec's own base model); for a model the
    paper does not name (or, without `paper_basis`, one named like a paper model but of
    another architecture), N is its exact parameter count and pretraining is unknown (None)
    unless `pretrain_tokens` is given.
    """
    exact = (float(param_count(cfg)), 0.0)
    nominal, paper_tokens = PAPER_TABLE2_BASIS.get(cfg.name, exact) if paper_basis else exact
    c = family_of(cfg).flops_per_param_token
    tokens = paper_tokens if pretrain_tokens is None else pretrain_tokens
    pretrain = c * nominal * tokens if tokens > 0 else None
    finetune = c * nominal * finetune_positions
    return {"pretrain": pretrain, "finetune": finetune,
            "fraction": finetune / pretrain if pretrain else None}


def step_flops(cfg: ModelConfig, batch_size: int, input_length: int, target_length: int) -> float:
    """Analytic FLOPs of one optimizer step on `batch_size` packed sequences (fwd + bwd)."""
    return 3.0 * family_of(cfg).forward_flops_per_row(cfg, input_length, target_length) * batch_size


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def _dtype_bytes(name: str) -> int:
    if name not in DTYPE_BYTES:
        raise UserError(f"model dtype: unknown {name!r}; allowed: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


@functools.lru_cache(maxsize=256)
def adafactor_state_elements(cfg: ModelConfig, factored_min_dim: int = 128) -> int:
    """Second-moment elements of factored Adafactor without momentum, by optax's rule: a
    tensor whose second-largest dim is >= factored_min_dim keeps one statistic per slice
    along each of its two largest dims, any other tensor a full copy (plus the 1-element
    placeholders optax keeps for the unused kind)."""
    total = 0
    for _, _, shape in _param_shapes(cfg):
        n = _size(shape)
        dims = sorted(shape)
        if len(shape) >= 2 and dims[-2] >= factored_min_dim:
            total += n // dims[-1] + n // dims[-2] + 1
        else:
            total += n + 2
    return total


def memory_per_device(
    cfg: ModelConfig,
    mesh: MeshConfig,
    micro_batch: int,
    input_length: int,
    target_length: int,
    remat: bool,
    training: bool = True,
    factored_min_dim: int = 128,
    micro_batches: int = 1,
) -> dict[str, float]:
    """Estimated bytes per device for one micro-batch of `micro_batch` global rows (of
    `micro_batches` per optimizer step).

    Parameters, gradients and optimizer state are sharded over fsdp x tensor and replicated
    over data (norm scales are tiny and counted as sharded too). Besides them a training step
    holds the optimizer's update (a parameter-sized tree Adafactor rescales as a whole before
    applying it), the running sum of the micro-batches' gradients beside the current one's,
    and the weights cast to the compute dtype for the matmuls. Activations: rows are split
    over data x fsdp; heads, d_ff and vocab over tensor. Without remat every layer keeps its
    matmul inputs, attention probabilities and MLP intermediates for the backward pass; with
    remat it keeps only its input and recomputes one layer at a time.
    """
    family = family_of(cfg)
    shards = max(1, mesh.fsdp * mesh.tensor)
    pbytes, abytes = _dtype_bytes(cfg.param_dtype), _dtype_bytes(cfg.dtype)
    n = param_count(cfg)
    params = n * pbytes / shards
    grads = params * (2 if micro_batches > 1 else 1) if training else 0.0
    optimizer = 4.0 * adafactor_state_elements(cfg, factored_min_dim) / shards if training else 0.0
    if training:
        optimizer += params  # the update
    if abytes < pbytes:
        params += n * abytes / shards  # compute-dtype copy of the weights

    rows = micro_batch / max(1, mesh.data * mesh.fsdp)
    t = max(1, mesh.tensor)
    d, hd, ff, h = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.num_heads

    # Attention logits and softmax run in float32 whatever the compute dtype. In float32 XLA
    # keeps logits, exponentials and probabilities (3 copies of the scores); below float32,
    # two float32 copies and the probabilities cast to the compute dtype for the value matmul.
    score_bytes = 3 * 4.0 if abytes >= 4 else 2 * 4.0 + abytes
    # Dropout keeps, for the backward pass, its keep mask and the masked values (compute dtype)
    # of every element it touches (attention probabilities, MLP hidden units, sublayer outputs).
    drop_bytes = abytes + 1.0 if training and cfg.dropout_rate > 0 else 0.0

    def layer(tokens: int, keys: int, cross_keys: int = 0) -> float:
        """Bytes one layer saves per row: `tokens` queries attending `keys` keys (and the
        encoder's `cross_keys` outputs in a T5 decoder layer)."""
        # Norms run in float32 and keep their input and output.
        per_token = 3 * d + 4 * hd / t  # residual, norm input/output, q, k, v, attention context
        scores = h * tokens * keys / t
        extra, sublayers = 0.0, 2
        if cross_keys:
            per_token += 2 * d + 2 * hd / t  # cross-attention norm, query, context
            scores += h * tokens * cross_keys / t
            extra = cross_keys * 2 * hd / t  # cross-attention keys and values
            sublayers = 3
        # MLP norm, and the tensors of the MLP's hidden units kept for the backward pass
        # (the family's feed-forward form says how many).
        per_token += 2 * d + family.mlp.saved_per_hidden * ff / t
        dropped = scores + tokens * (ff / t + sublayers * d)
        return (tokens * per_token + extra) * abytes + scores * score_bytes + dropped * drop_bytes

    layers, logits_tokens = family.activation_layers(cfg, input_length, target_length)
    if not training:
        # Inference keeps one layer's activations at a time.
        act_bytes = max((layer(*x) for x in layers), default=0.0)
    elif remat:
        # Every layer's input, and for the layer being differentiated its recomputed activations
        # and, about as large, their gradients (without remat those take the place of the
        # activations the backward pass frees).
        act_bytes = sum(tok * d for tok, _, _ in layers) * abytes + 2 * max((layer(*x) for x in layers), default=0.0)
    else:
        act_bytes = sum(layer(*x) for x in layers)
    if training:
        # Each stack builds one float32 attention bias [heads, queries, keys] per row (mask
        # plus relative positions) that all its layers read, and its gradient.
        act_bytes += sum(2 * 4.0 * h / t * tok * keys + 4.0 * tok * cross for tok, keys, cross in set(layers))
    activations = act_bytes * rows
    # Logits and their gradient in float32, vocab split over tensor.
    activations += 2 * 4.0 * logits_tokens * cfg.vocab_size / t * rows
    total = params + grads + optimizer + activations
    return {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations, "total": total}
