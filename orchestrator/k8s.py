"""Kubernetes node pools and how a planned sweep maps onto them.

Pure: the planner's cells -> one WorkerShape per accelerator (pods per cell, devices and
CPU/memory per pod, TPU slice topology, how many cells may run at once), from which
orchestrator/k8s_render.py builds the KubeRay worker groups. The node-pool table follows
GKE's machine shapes and node labels (k8s/overlays use the same ones).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from trainers.spec import UserError

# KubeRay names the job's cluster <rayjob>-<5 chars> and its services after that; keep room.
MAX_NAME = 40


@dataclass(frozen=True)
class NodePool:
    """What one host of an accelerator looks like on a (GKE) node pool.

    cpu/memory_gib are what a pod may request on a full host (allocatable minus system
    reserve); a cell using part of a host gets the same share of them.
    """

    kind: str  # "gpu" | "tpu"
    resource: str  # extended resource counted per pod
    selector_key: str
    selector_value: str
    devices_per_host: int
    cpu: int
    memory_gib: int
    topology_dims: int = 0  # TPU: 3 (v4, v5p) or 2 (v5e, v6e) dimensional slice topology


NODE_POOLS: dict[str, NodePool] = {
    "a100-40g": NodePool("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator", "nvidia-tesla-a100", 8, 80, 560),
    "a100-80g": NodePool("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator", "nvidia-a100-80gb", 8, 80, 1100),
    "h100-80g": NodePool("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator", "nvidia-h100-80gb", 8, 96, 900),
    "h200-141g": NodePool("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator", "nvidia-h200-141gb", 8, 200, 2400),
    "tpu-v4": NodePool("tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator", "tpu-v4-podslice", 4, 200, 350, 3),
    "tpu-v5p": NodePool("tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator", "tpu-v5p-slice", 4, 180, 400, 3),
    "tpu-v5e": NodePool("tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator", "tpu-v5-lite-podslice", 4, 100, 160, 2),
    "tpu-v6e": NodePool("tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator", "tpu-v6e-slice", 4, 160, 600, 2),
}


@dataclass(frozen=True)
class WorkerShape:
    """One worker group: what a host of the largest cell needs, and how many may run."""

    accelerator: str
    kind: str  # "cpu" | "gpu" | "tpu"
    hosts: int  # pods per cell (TPU: numOfHosts of one slice)
    devices_per_host: int
    cpu: int
    memory_gib: int
    max_cells: int  # cells of this accelerator that may run at once
    topology: str = ""  # TPU slice topology, e.g. "2x2x4"
    custom_resources: tuple[tuple[str, float], ...] = ()

    @property
    def group_name(self) -> str:
        return k8s_name(f"{self.accelerator}-{self.devices_per_host * self.hosts}")


def k8s_name(text: str, limit: int = MAX_NAME) -> str:
    """A DNS-1123 label from free text (sweep names may hold '_' or capitals)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:limit].rstrip("-")
    return name or "sweep"


def tpu_topology(accelerator: str, chips: int, dims: int) -> str:
    """GKE's gke-tpu-topology value of a slice of `chips` chips (e.g. 16 v4 chips: 2x2x4)."""
    if dims == 2 and chips == 1:
        return "1x1"
    if chips < 4 or chips & (chips - 1):
        raise UserError(f"accelerator {accelerator}: {chips} chips is not a GKE slice size; use 4, 8, 16, ... chips")
    # Grow the smallest (last-most) dimension, as GKE's shapes do: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4 ...
    shape = [2, 2, 1] if dims == 3 else [2, 2]
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, v in enumerate(shape) if v == smallest)
        shape[i] *= 2
    return "x".join(map(str, shape))


def _kind(accelerator: str) -> str:
    pool = NODE_POOLS.get(accelerator)
    if pool is not None:
        return pool.kind
    if accelerator == "cpu":
        return "cpu"
    raise UserError(f"accelerator: {accelerator!r} has no Kubernetes node pool; allowed: cpu, {', '.join(NODE_POOLS)}")


def _ray_per_host(cell: Any) -> dict[str, Any]:
    from orchestrator.planner import ray_resources

    return dict(ray_resources(cell) or {})


def worker_shapes(cells: Iterable[Any], max_concurrent: int) -> list[WorkerShape]:
    """One shape per accelerator in the plan, sized by its largest feasible cell."""
    feasible = [c for c in cells if getattr(c, "feasible", True)]
    if not feasible:
        raise UserError("plan: no feasible cell to run; see `flanscale plan` for the reasons")
    by_acc: dict[str, list[Any]] = {}
    for c in feasible:
        by_acc.setdefault(c.accelerator, []).append(c)
    shapes = []
    for acc, group in sorted(by_acc.items()):
        kind = _kind(acc)
        big = max(group, key=lambda c: (c.devices, c.hosts, c.memory_per_device_gib))
        hosts = max(1, int(big.hosts))
        per_host = max(1, math.ceil(big.devices / hosts))
        ray = _ray_per_host(big)
        ray_cpus = int(math.ceil(float(ray.get("num_cpus", 0) or 0)))
        custom = tuple(sorted(
            (k, float(v)) for k, v in (ray.get("resources") or {}).items()
            # Ray detects these itself from the devices it sees.
            if k not in ("CPU", "GPU", "TPU", "memory", "object_store_memory")
            and not k.startswith(("TPU-", "accelerator_type:"))
        ))
        if kind == "cpu":
            cpu = max(per_host, ray_cpus, 1) + 1  # one core for the raylet and data loading
            memory = max(4, math.ceil(1.5 * big.memory_per_device_gib * per_host) + 2)
            topology = ""
        else:
            pool = NODE_POOLS[acc]
            if per_host > pool.devices_per_host and kind == "gpu":
                raise UserError(f"cell {big.key}: {per_host} {acc} per host; a {pool.selector_value} host has {pool.devices_per_host}")
            share = min(1.0, per_host / pool.devices_per_host)
            cpu = max(1, int(pool.cpu * share), ray_cpus)
            memory = max(8, int(pool.memory_gib * share))
            topology = tpu_topology(acc, int(big.devices), pool.topology_dims) if kind == "tpu" else ""
        shapes.append(WorkerShape(
            accelerator=acc, kind=kind, hosts=hosts, devices_per_host=per_host, cpu=cpu,
            memory_gib=memory, max_cells=max(1, min(max_concurrent or len(group), len(group))),
            topology=topology, custom_resources=custom,
        ))
    return shapes
