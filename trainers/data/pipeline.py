"""From a DataConfig to an endless, resumable iterator of packed batches.

Examples are drawn in windows of `window` examples, each window is packed on its own
(best-fit decreasing) and its rows shuffled, and batches are cut from the resulting row
queue. The iterator's state is the example stream's state at the start of the oldest
window that still has rows queued, plus how many of that window's rows were already used:
restoring re-packs that window deterministically and skips those rows, so a resumed run
sees exactly the batches an uninterrupted one would. `Prefetcher` packs a few batches ahead
on a background thread; its state is that of the batches handed out, not of those ahead.
"""

from __future__ import annotations

import copy
import json
import queue
import random
import threading
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainers.data.packing import PACKERS, Encoded, build_batch, check_family, packing_efficiency, truncate
from trainers.data.tokenizer import EOS_ID, Tokenizer, load_tokenizer
from trainers.spec import DataConfig, UserError

__all__ = ["BatchIterator", "Prefetcher", "make_batches", "packing_efficiency", "EncodedMixture"]


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

    A batch holds only this process's rows of the global batch of B rows:
    [process_index * B / process_count, (process_index + 1) * B / process_count). Which
    examples share a row is decided per window over the whole example stream, identically
    on every process, so the global batch does not depend on the number of processes;
    only the arrays of the process's own rows are built.
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


class Prefetcher:
    """Batches of a resumable iterator packed ahead on a background thread.

    At most `depth` batches wait in the queue (and one more for room in it), so packing
    runs while the devices train and never runs far ahead of them. Each batch travels
    with the iterator's state right after it was packed; `state()` is the state after the
    last batch handed out, so the batches packed ahead but not consumed never advance what
    a checkpoint saves, and a run restored from it sees exactly the batches an
    uninterrupted run would.
    """

    _END = object()

    def __init__(self, inner: BatchIterator, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth {depth} must be >= 1")
        self.inner, self.depth = inner, depth
        self._state = copy.deepcopy(inner.state())
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rewind = False  # the inner iterator ran ahead of the batches handed out

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # every later call ends too
            raise StopIteration
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        batch, self._state = item
        return batch

    def state(self) -> dict:
        return copy.deepcopy(self._state)

    def restore(self, state: dict) -> None:
        self.close()
        self._state = copy.deepcopy(state)
        self.inner.restore(copy.deepcopy(state))
        self._rewind = False

    def close(self) -> None:
        """Stops the packing thread; the next batch starts it again."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting for room in the queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None
        # The batches packed ahead are dropped; should iteration go on, the inner
        # iterator restarts from the state after the last batch handed out.
        self._rewind = True

    def _start(self) -> None:
        if self._rewind:
            self.inner.restore(copy.deepcopy(self._state))
            self._rewind = False
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batch = next(self.inner)
                except StopIteration:
                    item: Any = self._END
                else:
                    item = (batch, copy.deepcopy(self.inner.state()))
                self._queue.put(item)  # close() drains the queue to unblock this
                if item is self._END:
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._queue.put(e)
