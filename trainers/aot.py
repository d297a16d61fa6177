"""Ahead-of-time compile of cells' train steps for their planned meshes, from shapes alone.

XLA is the judge of the planner's memory model: each cell's train step is built exactly as
the job builds it (trainers.job.make_setup, trainers.train.compile_step), lowered for the
cell's mesh on simulated host devices and compiled; the executable's own memory analysis
says what one device would hold. Parameters, optimizer state and batch are abstract
(jax.ShapeDtypeStruct), so nothing is allocated and any model size can be compiled.

The number of simulated devices is fixed when jax starts, so one process serves one mesh
size:

    python -m trainers.aot --devices 8 < cells.json

reads a JSON list of CellSpec dicts (all on `--devices` devices) and prints one JSON object
per cell, one per line, as each finishes: {"key", "compile_s", "xla_memory_per_device_gib",
"xla_memory": {argument, output, temp, alias, per_device} bytes} or {"key", "error"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from trainers.spec import CellSpec, UserError

GIB = 1024**3
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def simulate_host_devices(count: int) -> None:
    """Make XLA's CPU client expose `count` devices; only effective before jax is imported."""
    if "jax" in sys.modules:
        raise RuntimeError("simulate_host_devices must run before jax is imported")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={count}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


def abstract_batch(cell: CellSpec, sharding: Any) -> dict[str, Any]:
    """The global batch the pipeline would feed the step, as shapes: the packer's own layout
    (keys, dtypes, trailing shapes) of an empty batch, grown to the global batch size."""
    import jax

    from trainers.data.packing import build_batch

    d = cell.data
    empty = build_batch([], cell.model.family, d.input_length, d.target_length)
    return {k: jax.ShapeDtypeStruct((cell.optim.batch_size,) + v.shape[1:], v.dtype, sharding=sharding)
            for k, v in empty.items()}


def memory_per_device(stats: Any) -> dict[str, int]:
    """Bytes one device holds while the step runs, from XLA's memory analysis: its inputs
    (state and batch), outputs and temporaries, less the outputs that reuse donated inputs."""
    parts = {
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
    }
    parts["per_device"] = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    return parts


def compile_cell(cell: CellSpec) -> dict[str, Any]:
    """Lower and compile the cell's train step on its planned mesh; memory and compile time."""
    from trainers import models
    from trainers.job import make_setup
    from trainers.train import abstract_initial_state, compile_step

    d = cell.data
    setup = make_setup(cell.model, cell.optim, cell.mesh, d.input_length, d.target_length)
    state = abstract_initial_state(setup, models.param_shapes(cell.model))
    batch = abstract_batch(cell, setup.batch_sharding)
    t0 = time.perf_counter()
    compiled, _ = compile_step(setup, state, batch)
    compile_s = time.perf_counter() - t0
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("this XLA backend reports no memory analysis")
    mem = memory_per_device(stats)
    return {"key": cell.key(), "compile_s": compile_s, "xla_memory_per_device_gib": mem["per_device"] / GIB,
            "xla_memory": mem}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, required=True, help="simulated host devices (every cell's mesh size)")
    args = ap.parse_args(argv)
    simulate_host_devices(args.devices)
    import jax

    cells = [CellSpec.from_dict(c) for c in json.load(sys.stdin)]
    if jax.device_count() != args.devices:
        raise RuntimeError(f"XLA exposes {jax.device_count()} devices, not {args.devices}")
    for cell in cells:
        try:
            if cell.mesh.devices != args.devices:
                raise UserError(f"cell {cell.key()}: mesh has {cell.mesh.devices} devices, not {args.devices}")
            out = compile_cell(cell)
        except Exception as e:  # one cell's failure (XLA, shapes) must not hide the others' results
            out = {"key": cell.key(), "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
