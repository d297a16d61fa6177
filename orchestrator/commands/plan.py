"""`flanscale plan SPEC [overrides...] [--format table|json]`: show a sweep's cells, their
resources, compute and cost before anything is scheduled."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.termtable import KEEP


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="expand a sweep spec into cells with resources, FLOPs and cost estimates",
        description=(
            "Expand a sweep spec (models x task counts x format sets) into cells and show, for "
            "each, its key, parameters, finetuning tokens and FLOPs, pretraining FLOPs, the "
            "finetune/pretrain fraction, the devices, hosts and mesh it needs, memory per "
            "device, and estimated hours and cost. Nothing is scheduled."
        ),
    )
    p.add_argument("spec", metavar="SPEC", help="sweep file (Hydra YAML), e.g. sweeps/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra-style overrides, e.g. task_counts=[9,89] models=[tiny-1] optim.learning_rate=1e-3")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--wide", action="store_true",
                   help="every column, however wide; by default columns that do not fit the terminal are left out "
                        "(mesh, hosts, micro-batches and pretraining FLOPs first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.planner import plan, totals
    from orchestrator.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    cells = plan(spec)
    if args.format == "json":
        json.dump([c.to_json() for c in cells], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(spec, cells, totals(cells), wide=args.wide)
    return 0


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


def _print_table(spec: Any, cells: list, tot: dict, wide: bool = False) -> None:
    from rich import box

    from orchestrator.termtable import Column, FittedTable, wide_console

    footers = {
        "model": "total",
        "ft FLOPs": human(tot["finetune_flops"]),
        "dev-h": f"{tot['est_device_hours']:,.3g}",
        "cost": f"{tot['est_cost']:,.2f}",
        "ok": f"{tot['feasible']}/{tot['cells']}",
    }
    left = {"key", "model", "formats", "mesh d/f/t", "ok"}
    values: dict[str, list[str]] = {col: [] for col in _RANKS}
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
    columns = [Column(col, values[col], rank=rank, footer=footers.get(col, ""),
                      justify="left" if col in left else "right") for col, rank in _RANKS.items()]
    table = FittedTable(columns, wide=wide, title=f"sweep {spec.name}: {len(cells)} cells on {spec.accelerator}",
                        show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    console = wide_console(table)
    console.print(table)
    for note in notes:
        # Whole lines (a terminal wraps them), so a refusal can be searched for as printed.
        console.print(note, highlight=False, soft_wrap=True)
