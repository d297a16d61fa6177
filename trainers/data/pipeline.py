"""From a DataConfig to an endless, resumable iterator of packed batches.

Examples are drawn in windows of `window` examples, each window is packed on its own
(best-fit decreasing) and its rows shuffled, and batches are cut from the resulting row
queue. The iterator's state is the example stream's state at the start of the oldest
window that still has rows queued, plus how many of that window's rows were already used:
restoring re-packs that window deterministically and skips those rows, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np

from trainers.data.packing import PACKERS, Encoded, build_batch, check_family, packing_efficiency, truncate
from trainers.data.tokenizer import EOS_ID, Tokenizer, load_tokenizer
from trainers.spec import DataConfig, UserError

__all__ = ["BatchIterator", "make_batches", "packing_efficiency", "EncodedMixture"]


class ExampleStream(Protocol):
    def next(self) -> Encoded: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


class EncodedMixture:
    """A MixtureStream whose examples come out tokenized, each side ending with EOS."""

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, seed: int, home: Path | str):
        from trainers.data.mixtures import MixtureStream, build_registry

        self.tokenizer = tokenizer
        self.mixture = MixtureStream(build_registry(cfg, home), cfg, seed, length_fn=lambda s: len(tokenizer.encode(s)))

    def next(self) -> Encoded:
        _, inputs, targets = self.mixture.next()
        return self.tokenizer.encode(inputs) + [EOS_ID], self.tokenizer.encode(targets) + [EOS_ID]

    def state(self) -> dict:
        return self.mixture.state()

    def restore(self, state: dict) -> None:
        self.mixture.restore(state)


class BatchIterator:
    """Iterator of packed-batch dicts (numpy) for one JAX process.

    Every process packs the same global batch and keeps rows
    [process_index * B / process_count, (process_index + 1) * B / process_count).
    """

    def __init__(self, stream: ExampleStream, tokenizer: Tokenizer, family: str, batch_size: int,
                 input_length: int, target_length: int, seed: int, *, window: int | None = None,
                 packer: str = "best_fit", process_index: int = 0, process_count: int = 1):
        check_family(family)
        if packer not in PACKERS:
            raise UserError(f"packer {packer!r} unknown; allowed: {', '.join(PACKERS)}")
        if batch_size < 1 or process_count < 1 or batch_size % process_count:
            raise UserError(f"optim.batch_size: {batch_size} must be a positive multiple of the {process_count} processes")
        if not 0 <= process_index < process_count:
            raise UserError(f"process_index {process_index} out of range for {process_count} processes")
        if input_length < 2 or target_length < 2:
            raise UserError(f"data.input_length/target_length: {input_length}/{target_length}; each must be >= 2")
        self.stream, self.tokenizer, self.family = stream, tokenizer, family
        self.batch_size, self.input_length, self.target_length = batch_size, input_length, target_length
        self.seed, self.packer = seed, packer
        self.window = window or max(1024, 16 * batch_size)
        per = batch_size // process_count
        self._rows_slice = slice(process_index * per, (process_index + 1) * per)
        self._rows: deque[list[Encoded]] = deque()
        self._windows: deque[list] = deque()  # [stream state at window start, rows left in queue, rows used]
        self.batches = 0
        self.last_efficiency = 0.0

    def __iter__(self) -> "BatchIterator":
        return self

    def _pack_window(self) -> None:
        start = self.stream.state()
        examples = [truncate(self.stream.next(), self.family, self.input_length, self.target_length) for _ in range(self.window)]
        rows = PACKERS[self.packer](examples, self.family, self.input_length, self.target_length)
        # Best-fit leaves rows sorted by size; shuffle so each batch mixes long and short ones.
        key = zlib.crc32(json.dumps(start, sort_keys=True).encode()) ^ self.seed
        random.Random(key).shuffle(rows)
        self._rows.extend([examples[k] for k in row] for row in rows)
        self._windows.append([start, len(rows), 0])

    def _take_row(self) -> list[Encoded]:
        while not self._rows:
            self._pack_window()
        w = self._windows[0]
        w[1] -= 1
        w[2] += 1
        if w[1] == 0:
            self._windows.popleft()
        return self._rows.popleft()

    def __next__(self) -> dict[str, np.ndarray]:
        rows = [self._take_row() for _ in range(self.batch_size)]
        self.batches += 1
        batch = build_batch(rows[self._rows_slice], self.family, self.input_length, self.target_length)
        self.last_efficiency = packing_efficiency(batch)
        return batch

    def state(self) -> dict:
        if not self._windows:
            return {"stream": self.stream.state(), "skip_rows": 0, "batches": self.batches}
        start, _, used = self._windows[0]
        return {"stream": start, "skip_rows": used, "batches": self.batches}

    def restore(self, state: dict) -> None:
        self._rows.clear()
        self._windows.clear()
        self.stream.restore(state["stream"])
        for _ in range(int(state["skip_rows"])):
            self._take_row()
        self.batches = int(state["batches"])


def make_batches(cfg: DataConfig, family: str, batch_size: int, seed: int, home: Path | str, *,
                 process_index: int = 0, process_count: int = 1, packer: str = "best_fit",
                 window: int | None = None, vocab_size: int | None = None) -> BatchIterator:
    """The cell's finetuning batches (see module docstring); `.tokenizer` is what encoded them.

    `vocab_size` is the model's vocabulary: a trained SentencePiece model gets at most that
    many pieces, and any tokenizer larger than it is refused (its ids would not embed).
    """
    check_family(family)
    tokenizer = load_tokenizer(cfg, home, vocab_size=vocab_size)
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise UserError(f"model.vocab_size: {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} ids ({cfg.tokenizer!r})")
    stream = EncodedMixture(cfg, tokenizer, seed, home)
    return BatchIterator(stream, tokenizer, family, batch_size, cfg.input_length, cfg.target_length, seed,
                         window=window, packer=packer, process_index=process_index, process_count=process_count)
