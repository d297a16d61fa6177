"""Plain, frozen specs for one cell's job.

These dataclasses are the only things that cross the boundary between the control plane
(orchestrator, Ray) and the data plane (a JAX process). They hold plain values only, so
`to_dict` / `from_dict` round-trip through JSON, YAML, Ray and MLflow unchanged.
Defaults live here once; sweep YAML only overrides them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, get_type_hints

# Choices both sides check: the spec before anything is scheduled (orchestrator/spec.py), the
# job where it builds them (trainers/optim.py, trainers/data).
OPTIMIZERS = ("adafactor", "adamw", "sgd")
SCHEDULES = ("constant", "linear_warmup_constant", "cosine")
SUBMIXTURES = ("cot", "muffin", "t0sf", "niv2")  # the collection's sub-mixtures, in ladder order
# The paper's nested task ladder: the 9 CoT datasets, + Muffin (89), + T0-SF (282), + NIV2 (1,836).
TASK_LADDER = (9, 89, 282, 1836)

# Bump when the data pipeline changes what a given DataConfig produces, so old cells
# are not mistaken for new ones (it is part of the cell key).
DATA_VERSION = "2"


class UserError(ValueError):
    """Bad input from a user (spec, data file, checkpoint, flag).

    The message is one line naming the file or field, the bad value and what is allowed;
    the CLI prints it without a traceback and exits non-zero.
    """


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model (of any registered family). Names follow T5 / PaLM papers."""

    name: str = "tiny-1"
    family: str = "t5"  # a trainers/families entry: "t5" (encoder-decoder, T5 v1.1) | "decoder" (PaLM-style)
    vocab_size: int = 512
    d_model: int = 64
    d_ff: int = 128
    num_heads: int = 4
    d_kv: int = 16
    num_kv_heads: int = 0  # 0 = same as num_heads (T5); 1 = multi-query (PaLM)
    num_encoder_layers: int = 2  # 0 for decoder-only
    num_decoder_layers: int = 2
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    tie_embeddings: bool = False  # T5 v1.1 unties; PaLM ties
    parallel_block: bool = False  # PaLM: attention and MLP read the same normed input
    dropout_rate: float = 0.0
    param_dtype: str = "float32"  # "float32" | "bfloat16"
    dtype: str = "float32"  # compute dtype
    remat: bool = False  # rematerialise each layer's activations in the backward pass
    remat_policy: str = "full"  # with remat, what a layer keeps: "full" (its input) | "dots" | "dots_no_batch"
    scan_layers: bool = True  # one scanned layer stack (params with a leading "layers" axis) vs unrolled


@dataclass(frozen=True)
class DataConfig:
    """What the cell trains on and how it is packed."""

    source: str = "synthetic"  # "synthetic" (built-in suite) | "flan" (collection JSONL exports)
    paths: tuple[str, ...] = ()  # files or directories for source="flan"
    task_count: int = 9  # 0 = no finetuning (the base model)
    mixture: str = "A"  # proportion preset: "A" (scaling ablations) | "B" (final models) | "custom"
    proportions: tuple[tuple[str, float], ...] = ()  # (sub-mixture, weight) for mixture="custom"
    caps: tuple[tuple[str, int], ...] = ()  # (sub-mixture, per-task cap) overriding the paper's
    formats: tuple[str, ...] = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "cot")
    with_cot: bool = True  # include the 9 CoT datasets
    input_length: int = 2048
    target_length: int = 512
    tokenizer: str = "byte"  # "byte" | "spm" (trained on the data, cached) | path to a .model
    examples_per_task: int = 200  # synthetic suite: examples generated per task
    version: str = DATA_VERSION


@dataclass(frozen=True)
class OptimConfig:
    """Finetuning hyperparameters (paper Table 22) and the optimizer."""

    optimizer: str = "adafactor"  # "adafactor" | "adamw" | "sgd"
    learning_rate: float = 5e-4
    schedule: str = "constant"  # "constant" | "linear_warmup_constant" | "cosine"
    warmup_steps: int = 0
    batch_size: int = 64  # global batch, in packed sequences
    micro_batches: int = 1  # gradient accumulation steps per optimizer step
    steps: int = 100
    decay_rate: float = 0.8  # Adafactor second-moment decay exponent (T5X default)
    factored_min_dim: int = 128  # factor second moments of matrices with both dims >= this
    z_loss: float = 1e-4
    grad_clip: float = 0.0  # 0 = off (T5X Adafactor uses update clipping instead)


@dataclass(frozen=True)
class MeshConfig:
    """Devices and how the model is laid out on them (decided by the planner)."""

    accelerator: str = "cpu"
    devices: int = 1  # total devices over all hosts
    hosts: int = 1  # JAX processes, one per host
    data: int = 1
    fsdp: int = 1
    tensor: int = 1


def mesh_from_sizes(text: str, where: str) -> MeshConfig:
    """A mesh given as "DATA,FSDP,TENSOR" (sizes >= 1) on one host, e.g. "4,1,2"."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise UserError(f"{where}: {text!r} is not a mesh; give three sizes >= 1 as DATA,FSDP,TENSOR, e.g. 4,1,2")
    data, fsdp, tensor = map(int, parts)
    return MeshConfig(devices=data * fsdp * tensor, data=data, fsdp=fsdp, tensor=tensor)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation run at the end of a cell (and every `every_steps` if > 0): the
    held-out loss (`loss`) and the benchmarks in their modes."""

    benchmarks: tuple[str, ...] = ()  # names in trainers.eval.benchmarks (mmlu, bbh, ..., unseen_mc, ...)
    modes: tuple[str, ...] = ("direct", "cot")  # "direct" | "cot" | "sc" | "rc" (rank classification)
    data_dir: str = ""  # "" = the data shipped with flanscale (stand-ins, the unseen-task benchmark)
    mmlu_split: str = "test"  # the split MMLU-shaped benchmarks evaluate ("dev" gives the shots)
    loss: bool = True  # eval/loss: cross-entropy on the fixed held-out loss set
    loss_examples: int = 48  # held-out loss examples per group
    every_steps: int = 0
    max_examples: int = 0  # per task; 0 = all
    shots: int = -1  # exemplars per prompt; -1 = each benchmark's own (5 MMLU, 3 BBH, 1 TyDiQA, 8 MGSM), 0 = zero-shot
    max_new_tokens: int = 64  # CoT and self-consistency rationales
    direct_max_new_tokens: int = 0  # direct answers (a letter, a span, a number); 0 = max_new_tokens
    batch_size: int = 8  # prompts decoded (questions ranked) together
    sc_samples: int = 40
    sc_temperature: float = 0.7
    sc_top_k: int = 40


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end (and on SIGTERM)
    keep: int = 2


@dataclass(frozen=True)
class CellSpec:
    """Everything one cell's job needs. `key()` identifies the trained model it produces."""

    sweep: str = "adhoc"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    init_checkpoint: str = ""  # base model to finetune from ("" = random init)
    pretrain_flops: float = 0.0  # compute that made the base model (for the FLOPs fraction)
    # The settings (dotted fields) the sweep's `axes:` sweeps: the cell's run logs each as a
    # param and tag (trainers.axes). Their values are the settings above, already in the key.
    axes: tuple[str, ...] = ()

    def key(self) -> str:
        return cell_key(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellSpec":
        return from_dict(cls, d)


def did_you_mean(name: object, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """' (did you mean 'x'?)' naming the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Settings that change where or how a cell runs, or what is measured afterwards, but not the
# model it trains, and why: they stay out of the key so that re-planning on other hardware, or
# adding a benchmark, finds the same run and checkpoint (and they are not grid axes,
# trainers/axes.py). The compute dtype does change what the cell computes (a bf16 cell is not
# the fp32 cell, nor is its checkpoint), so it is in the key.
NOT_TRAINED = {
    "mesh": "the device layout does not change what a cell trains",
    "eval": "evaluation settings do not change what a cell trains (list benchmarks in eval.benchmarks)",
    "checkpoint": "checkpointing does not change what a cell trains",
    "model.remat": "rematerialisation recomputes the same activations, trading time for memory",
    "model.remat_policy": "rematerialisation recomputes the same activations, trading time for memory",
    "optim.micro_batches": "micro-batching only splits the same batch (the planner chooses it to fit memory)",
}
# ...and what is not a setting at all: the sweep's name, the base model's cost, the axes' names.
_KEY_EXCLUDED = {"sweep", "pretrain_flops", "axes", *(k for k in NOT_TRAINED if "." not in k)}


def cell_key(spec: CellSpec) -> str:
    d = {k: v for k, v in to_dict(spec).items() if k not in _KEY_EXCLUDED}
    for dotted in (k for k in NOT_TRAINED if "." in k):
        section, name = dotted.split(".", 1)
        d[section] = {k: v for k, v in d[section].items() if k != name}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def to_dict(obj: Any) -> Any:
    """Dataclass -> nested dict of plain values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(x) for x in obj]
    return obj


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Nested dict -> dataclass, rebuilding nested dataclasses and tuples.

    Unknown keys raise ValueError naming the key and the allowed ones.
    """
    hints = get_type_hints(cls)
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UserError(f"{cls.__name__}: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    origin = getattr(tp, "__origin__", None)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = tp.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    return value
