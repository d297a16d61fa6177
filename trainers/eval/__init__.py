"""Held-out evaluation: the benchmark registry (`benchmarks`), loaders of the release file
formats, prompts, generation and rank classification, extraction, scoring (exact match,
normalized averages) and the held-out loss. Import the submodules you need; the package
itself imports nothing, so the control plane can read the registry without the rest."""
