"""Held-out evaluation: the benchmark registry (`benchmarks`), the benchmark shapes it points
at (`shapes`: release file format, prompts, answer extraction, rank-classification options),
generation and rank classification, scoring (exact match, normalized averages), the one
evaluation loop (`runner`) and the held-out loss. Import the submodules you need; the package
itself imports nothing, so the control plane can read the registry without the rest."""
