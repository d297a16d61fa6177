"""`flanscale plan SPEC [overrides...] [--format table|json] [--compile [--cells KEY ...]]`: show a
sweep's cells, their resources, compute and cost before anything is scheduled; with
--compile, XLA's memory per device for each cell's train step beside the planner's."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from typing import Any

from orchestrator.termtable import KEEP
from trainers.spec import UserError, did_you_mean


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="expand a sweep spec into cells with resources, FLOPs and cost estimates",
        description=(
            "Expand a sweep spec (models x task counts x format sets) into cells and show, for "
            "each, its key, parameters, finetuning tokens and FLOPs, pretraining FLOPs, the "
            "finetune/pretrain fraction, the devices, hosts and mesh it needs, memory per "
            "device, and estimated hours and cost. A cell finetuning from an init_checkpoint is "
            "counted as the architecture the checkpoint's model.json records, with a note where "
            "that is not its preset's. Nothing is scheduled."
        ),
    )
    p.add_argument("spec", metavar="SPEC", help="sweep file (Hydra YAML), e.g. sweeps/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra-style overrides, e.g. task_counts=[9,89] models=[tiny-1] optim.learning_rate=1e-3")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--compile", action="store_true",
                   help="also lower and compile each cell's train step for its planned mesh on simulated host "
                        "devices (abstract shapes, nothing allocated) and show XLA's memory per device and the "
                        "compile time beside the planner's estimate")
    p.add_argument("--cells", nargs="+", metavar="KEY", default=None,
                   help="with --compile: compile only these cells (keys as shown by plan); default every cell")
    p.add_argument("--compile-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="with --compile: give up on the cells of one mesh size not compiled after this long "
                        "(default: 3600)")
    p.add_argument("--wide", action="store_true",
                   help="every column, however wide; by default columns that do not fit the terminal are left out "
                        "(mesh, hosts, micro-batches and pretraining FLOPs first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.planner import plan, totals
    from orchestrator.spec import load_spec

    if args.cells is not None and not args.compile:
        raise UserError("--cells: selects the cells to compile; add --compile")
    if args.compile_timeout <= 0:
        raise UserError(f"--compile-timeout: {args.compile_timeout:g} must be > 0 seconds")
    spec = load_spec(args.spec, args.overrides)
    cells = plan(spec)
    compiled = compile_cells(select_cells(cells, args.cells), args.compile_timeout) if args.compile else None
    if args.format == "json":
        out = []
        for c in cells:
            d = c.to_json()
            if compiled is not None:
                d.update(compiled.get(c.key, _NOT_COMPILED))
            out.append(d)
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(spec, cells, totals(cells), wide=args.wide, compiled=compiled)
    return 0


# ---------------------------------------------------------------------------------------------
# --compile: one `python -m trainers.aot` process per mesh size, since the number of simulated
# devices is fixed when jax starts (and this package never imports jax).
# ---------------------------------------------------------------------------------------------

_NOT_COMPILED = {"xla_memory_per_device_gib": None, "compile_s": None}


def select_cells(cells: list, keys: list[str] | None) -> list:
    """The cells --cells names (every cell without it), refusing unknown keys."""
    if keys is None:
        return list(cells)
    known = {c.key: c for c in cells}
    for k in keys:
        if k not in known:
            raise UserError(f"--cells: no cell {k!r} in this plan{did_you_mean(k, known)}; keys: {', '.join(known)}")
    return [known[k] for k in dict.fromkeys(keys)]


def parse_compile_output(stdout: str, keys: list[str], failure: str) -> dict[str, dict[str, Any]]:
    """trainers.aot's JSON lines -> {key: fields added to the cell}. A cell with no line of
    its own (the process died or timed out before it) gets `failure` as its error."""
    results: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(r, dict) or r.get("key") not in keys:
            continue
        if "error" in r:
            results[r["key"]] = {**_NOT_COMPILED, "compile_error": str(r["error"])}
        else:
            results[r["key"]] = {"xla_memory_per_device_gib": float(r["xla_memory_per_device_gib"]),
                                 "compile_s": float(r["compile_s"]), "xla_memory": r.get("xla_memory", {})}
    for k in keys:
        results.setdefault(k, {**_NOT_COMPILED, "compile_error": failure})
    return results


def compile_cells(cells: list, timeout: float) -> dict[str, dict[str, Any]]:
    """{cell key: xla_memory_per_device_gib, compile_s (and xla_memory) or compile_error}."""
    by_devices: dict[int, list] = defaultdict(list)
    results: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c.mesh:
            by_devices[c.devices].append(c)
        else:
            results[c.key] = {**_NOT_COMPILED, "compile_error": "no mesh was planned (see the cell's reason)"}
    for devices, group in sorted(by_devices.items()):
        keys = [c.key for c in group]
        print(f"compiling {len(group)} cell(s) on {devices} simulated device(s)...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "trainers.aot", "--devices", str(devices)]
        payload = json.dumps([c.to_json()["spec"] for c in group])
        try:
            proc = subprocess.run(cmd, input=payload, capture_output=True, text=True, timeout=timeout)
            stdout = proc.stdout
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            failure = f"compiler process exited with status {proc.returncode}: {tail[:300]}"
        except subprocess.TimeoutExpired as e:
            out = e.stdout or ""
            stdout = out.decode() if isinstance(out, bytes) else out
            failure = f"not compiled within --compile-timeout {timeout:g} s"
        results.update(parse_compile_output(stdout, keys, failure))
    return results


def human(x: float | None, unit: str = "") -> str:
    """Short engineering notation: 591232 -> 591K, 5.4e11 -> 540G."""
    if x is None:
        return "-"
    if abs(x) >= 1e18:
        return f"{x:.3g}{unit}"
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


# Columns in the order shown, with the rank that decides which go first when the terminal is
# too narrow (lower first; termtable.KEEP never): what a cell is, whether it runs and what it
# costs stay; how it is laid out goes.
_RANKS = {"#": 2, "key": KEEP, "model": KEEP, "tasks": KEEP, "formats": KEEP, "params": 10, "ft tokens": 4,
          "ft FLOPs": 14, "pt FLOPs": 3, "ft/pt": 8, "dev": 13, "hosts": 1, "mesh d/f/t": 5, "micro": 0,
          "GiB/dev": 9, "est h": 12, "dev-h": 6, "cost": 15, "ok": KEEP}
# With --compile, beside GiB/dev: what the compile is for, so kept before cost and hours.
_COMPILE_RANKS = {"XLA GiB": 16, "compile s": 11}


def _print_table(spec: Any, cells: list, tot: dict, wide: bool = False, compiled: dict | None = None) -> None:
    from rich import box
    from rich.markup import escape

    from orchestrator.termtable import Column, FittedTable, wide_console
    from trainers.axes import axis_named

    footers = {
        "model": "total",
        "ft FLOPs": human(tot["finetune_flops"]),
        "dev-h": f"{tot['est_device_hours']:,.3g}",
        "cost": f"{tot['est_cost']:,.2f}",
        "ok": f"{tot['feasible']}/{tot['cells']}",
    }
    left = {"key", "model", "formats", "axes", "mesh d/f/t", "ok"}
    ranks = dict(_RANKS)
    if compiled is not None:
        at = list(ranks).index("GiB/dev") + 1
        ranks = dict(list(ranks.items())[:at] + list(_COMPILE_RANKS.items()) + list(ranks.items())[at:])
        ranks["GiB/dev"] = ranks["XLA GiB"]  # the two figures are compared: shown or dropped together
    if any(c.axes for c in cells):  # the sweep's own axes (`axes:`), beside the built-in ones
        at = list(ranks).index("formats") + 1
        ranks = dict(list(ranks.items())[:at] + [("axes", KEEP)] + list(ranks.items())[at:])
    values: dict[str, list[str]] = {col: [] for col in ranks}
    notes = []
    for c in cells:
        mesh = "/".join(str(c.mesh.get(k, "-")) for k in ("data", "fsdp", "tensor")) if c.mesh else "-"
        if not c.feasible:
            notes.append(f"[red]infeasible[/red] [{len(notes) + 1}] {c.model} tasks={c.task_count} {c.formats}: {c.reason}")
        row = (str(c.priority), c.key, c.model, str(c.task_count), c.formats, human(c.params), human(c.finetune_tokens),
               human(c.finetune_flops), human(c.pretrain_flops),
               f"{100 * c.flops_fraction:.3g}%" if c.flops_fraction is not None else "-", str(c.devices), str(c.hosts),
               mesh, str(c.micro_batches), f"{c.memory_per_device_gib:.3g}", f"{c.est_hours:.3g}",
               f"{c.est_device_hours:.3g}", f"{c.est_cost:,.2f}", "yes" if c.feasible else f"[red]no [{len(notes)}][/red]")
        for col, value in zip(_RANKS, row):
            values[col].append(value)
        if "axes" in values:
            values["axes"].append(", ".join(axis_named(f).fragment(v) for f, v in c.axes.items()))
        if compiled is not None:
            xla, secs = _compile_cells_text(c, compiled.get(c.key), notes)
            values["XLA GiB"].append(xla)
            values["compile s"].append(secs)
    columns = [Column(col, values[col], rank=rank, footer=footers.get(col, ""),
                      justify="left" if col in left else "right") for col, rank in ranks.items()]
    table = FittedTable(columns, wide=wide, title=f"sweep {spec.name}: {len(cells)} cells on {spec.accelerator}",
                        show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    console = wide_console(table)
    console.print(table)
    from orchestrator.measured import mfu_notes

    notes += [f"[cyan]hours[/cyan] {escape(n)}" for n in mfu_notes(spec, cells)]
    # A base checkpoint of another architecture than its preset, said once for all its cells.
    notes += [f"[yellow]architecture[/yellow] {escape(n)}" for n in dict.fromkeys(c.architecture_note for c in cells) if n]
    for note in notes:
        # Whole lines (a terminal wraps them), so a refusal can be searched for as printed.
        console.print(note, highlight=False, soft_wrap=True)


def _compile_cells_text(cell: Any, result: dict | None, notes: list[str]) -> tuple[str, str]:
    """The XLA GiB and compile s cells of a row; a failed compile adds a numbered note."""
    if result is None:
        return "-", "-"
    if result.get("compile_error"):
        notes.append(f"[red]not compiled[/red] [{len(notes) + 1}] {cell.model} {cell.key}: {result['compile_error']}")
        return f"[red]error [{len(notes)}][/red]", "-"
    return f"{result['xla_memory_per_device_gib']:.3g}", f"{result['compile_s']:.3g}"
