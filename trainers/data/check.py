"""Cheap, JAX-free checks of a cell's input files, run where the sweep is planned.

A cell reads its Flan exports, base checkpoint and benchmark data only after Ray placed it;
a missing file or a file in the wrong format would then fail every cell that reads it, after
the sweep's runs were created. These checks read just enough of each input to tell (the
first record of each export, the base checkpoint's model.json, a SentencePiece model and
the benchmark files through their own loaders) and raise UserError naming the field, the file and what is expected.
"""

from __future__ import annotations

from pathlib import Path

from trainers.data.flan import find_files, format_of, read_records, submixture_of
from trainers.architecture import BASE_CONFIG, BASE_PARAMS, read_base_config
from trainers.spec import ModelConfig, UserError


def flan_exports(paths: tuple[str, ...], where: str = "data.paths") -> int:
    """Every export file under `paths` exists and its first record is a Flan record whose
    task_source and template_type are known; returns the number of files."""
    try:
        files = find_files(paths)
        for path in files:
            for lineno, rec in read_records(path):
                at = f"{path}:{lineno}"
                format_of(rec["template_type"], submixture_of(rec["task_source"], at), at)
                break
            else:
                raise UserError(f"{path}: no records; a Flan export has one JSON object per line")
    except UserError as e:  # the readers name the field themselves when they name one
        raise UserError(f"{where}: {str(e).removeprefix('data.paths: ')}") from None
    return len(files)


def base_checkpoint(path: str, where: str = "init_checkpoint") -> ModelConfig:
    """`path` is a base checkpoint as `flanscale pretrain` / `flanscale convert` write it:
    a folder with a readable model.json (a ModelConfig) and a params/ folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"{where}: {path!r} {what}; give a base checkpoint folder ({BASE_CONFIG} + {BASE_PARAMS}/), "
                        "as `flanscale pretrain --out` or `flanscale convert` write")
    cfg = read_base_config(path, where)
    params = root / BASE_PARAMS
    if not params.is_dir() or not any(params.iterdir()):
        raise UserError(f"{where}: {path!r} has no {BASE_PARAMS}/ folder with the weights; "
                        "not a complete base checkpoint")
    return cfg


def eval_data(benchmark_names: tuple[str, ...], data_dir: str, mmlu_split: str, where: str = "eval.data_dir") -> None:
    """Each benchmark that reads `data_dir` loads from it with the loader the cell uses."""
    from trainers.eval import benchmarks, loaders

    for name in benchmark_names:
        try:
            bench = loaders.load(name, data_dir, mmlu_split)
        except UserError as e:
            raise UserError(f"{where}: {name}: {e}") from None
        if not any(bench.tasks.values()):
            raise UserError(f"{where}: {name}: no examples under {benchmarks.benchmark_root(name, data_dir)}")


def tokenizer_model(path: str, where: str = "data.tokenizer") -> int:
    """A SentencePiece .model file loads with T5's special ids; returns its vocabulary size."""
    from trainers.data.tokenizer import load_spm

    try:
        return load_spm(path).vocab_size
    except UserError as e:
        raise UserError(f"{where}: {str(e).removeprefix('data.tokenizer: ')}") from None
