"""Benchmark shapes, JAX-free: one module per shape, each a `Shape` subclass (`base.py`) and
its instance `SHAPE`, holding the shape's loader, prompts (direct, CoT, rank classification,
few-shot), extraction (strict and flexible), gold answers, rank-classification options and
its members of the normalized average. A benchmark entry in `trainers/eval/benchmarks.py`
names its shape object; nothing else branches on a shape.

Adding a shape is one module here and one benchmark entry naming its `SHAPE`.
"""
