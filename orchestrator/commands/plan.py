"""`flanscale plan SPEC [overrides...] [--format table|json]`: show a sweep's cells, their
resources, compute and cost before anything is scheduled."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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
        _print_table(spec, cells, totals(cells))
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


def _print_table(spec: Any, cells: list, tot: dict) -> None:
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {spec.name}: {len(cells)} cells on {spec.accelerator}", show_footer=True,
                  box=box.SIMPLE_HEAD, pad_edge=False)
    footers = {
        "model": "total",
        "ft FLOPs": human(tot["finetune_flops"]),
        "dev-h": f"{tot['est_device_hours']:,.3g}",
        "est h": "",
        "cost": f"{tot['est_cost']:,.2f}",
        "ok": f"{tot['feasible']}/{tot['cells']}",
    }
    left = {"key", "model", "formats", "mesh d/f/t", "ok"}
    for col in ("#", "key", "model", "tasks", "formats", "params", "ft tokens", "ft FLOPs", "pt FLOPs", "ft/pt",
                "dev", "hosts", "mesh d/f/t", "micro", "GiB/dev", "est h", "dev-h", "cost", "ok"):
        table.add_column(col, footer=footers.get(col, ""), justify="left" if col in left else "right", no_wrap=True)
    notes = []
    for c in cells:
        mesh = "/".join(str(c.mesh.get(k, "-")) for k in ("data", "fsdp", "tensor")) if c.mesh else "-"
        frac = f"{100 * c.flops_fraction:.3g}%" if c.flops_fraction is not None else "-"
        if not c.feasible:
            notes.append(f"[{len(notes) + 1}] {c.model} tasks={c.task_count} {c.formats}: {c.reason}")
        table.add_row(
            str(c.priority), c.key, c.model, str(c.task_count), c.formats, human(c.params), human(c.finetune_tokens),
            human(c.finetune_flops), human(c.pretrain_flops), frac, str(c.devices), str(c.hosts), mesh,
            str(c.micro_batches), f"{c.memory_per_device_gib:.3g}", f"{c.est_hours:.3g}",
            f"{c.est_device_hours:.3g}", f"{c.est_cost:,.2f}",
            "yes" if c.feasible else f"[red]no [{len(notes)}][/red]",
        )
    # Wide enough for every column even when piped (rich assumes 80 columns then).
    console = Console(width=max(200, shutil.get_terminal_size((200, 24)).columns))
    console.print(table)
    for note in notes:
        console.print(f"[red]infeasible[/red] {note}", highlight=False, soft_wrap=True)
