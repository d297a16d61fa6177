"""T5 span corruption over a local text corpus, packed into the finetuning batch format.

As in T5: documents are tokenized and concatenated, cut into chunks whose length is chosen
so that the corrupted input and target fit their lengths, and in each chunk 15% of the
tokens (noise density) are masked in spans of mean length 3. Each masked span is replaced
in the input by a sentinel id, counting down from the top of the model's vocabulary
(vocab_size - 1, vocab_size - 2, ...), and the target lists each sentinel followed by the
span it hides. The result packs exactly like finetuning data, so a small base model can be
pretrained here and then finetuned.

The corpus is the synthetic suite's text by default, or local files: `.txt` (one document
per line) or `.jsonl` (a "text" field per line), plain or gzipped.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from trainers.data.packing import Encoded
from trainers.data.pipeline import BatchIterator
from trainers.data.tokenizer import EOS_ID, Tokenizer
from trainers.spec import UserError

MAX_SENTINELS = 100  # T5's extra ids


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator, max_spans: int = MAX_SENTINELS) -> np.ndarray:
    """Boolean [length] mask: alternating non-noise / noise spans, starting with non-noise."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(1, min(int(round(num_noise / mean_span_length)), max_spans, num_noise, length - num_noise))

    def segment(n: int) -> np.ndarray:  # n items into num_spans non-empty parts
        cuts = np.sort(rng.choice(n - 1, num_spans - 1, replace=False) + 1) if num_spans > 1 else np.array([], int)
        return np.diff(np.concatenate([[0], cuts, [n]]))

    noise, keep = segment(num_noise), segment(length - num_noise)
    mask = np.zeros(length, bool)
    i = 0
    for k, n in zip(keep, noise):
        mask[i + k : i + k + n] = True
        i += k + n
    return mask


def span_corrupt(tokens: list[int], mask: np.ndarray, vocab_size: int) -> Encoded:
    """(inputs, targets), each ending with EOS; sentinel k is vocab_size - 1 - k."""
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, t in enumerate(tokens):
        if mask[i]:
            if i == 0 or not mask[i - 1]:
                span += 1
                inputs.append(vocab_size - 1 - span)
                targets.append(vocab_size - 1 - span)
            targets.append(t)
        else:
            inputs.append(t)
    return inputs + [EOS_ID], targets + [EOS_ID]


def raw_length(input_length: int, target_length: int, noise_density: float, mean_span_length: float) -> int:
    """The longest chunk whose corrupted input and target (with EOS) fit (T5's random_spans_helper)."""

    def fits(n: int) -> bool:
        noise = int(round(n * noise_density))
        spans = max(1, int(round(noise / mean_span_length)))
        return n - noise + spans + 1 <= input_length and noise + spans + 1 <= target_length

    n = 2
    while fits(n + 1):
        n += 1
    if not fits(n):
        raise UserError(f"input/target lengths {input_length}/{target_length} too short for span corruption")
    return n


class _SuiteDocs:
    def read(self, cursor: int) -> tuple[str, int]:
        from trainers.data.suite import corpus_document

        return corpus_document(int(cursor)), int(cursor) + 1

    def start(self) -> int:
        return 0


class _FileDocs:
    """Documents of local files, addressed by [file index, byte offset]; wraps around at the end."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        for p in paths:
            if not p.is_file():
                raise UserError(f"corpus: {str(p)!r} does not exist")

    def start(self) -> list[int]:
        return [0, 0]

    def read(self, cursor: list[int]) -> tuple[str, list[int]]:
        f_idx, pos = int(cursor[0]), int(cursor[1])
        for _ in range(2 * len(self.paths) + 1):
            path = self.paths[f_idx]
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rb") as f:
                f.seek(pos)
                while line := f.readline():
                    pos += len(line)
                    text = self._text(path, line)
                    if text.strip():
                        return text, [f_idx, pos]
            f_idx, pos = (f_idx + 1) % len(self.paths), 0
        raise UserError(f"corpus: no text in {', '.join(map(str, self.paths))}")

    @staticmethod
    def _text(path: Path, line: bytes) -> str:
        if ".jsonl" not in path.name:
            return line.decode("utf-8", errors="replace").rstrip("\n")
        try:
            return str(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}: a line is not a JSON object with a 'text' field") from None


def corpus_files(corpus: str | Path) -> list[Path]:
    p = Path(corpus).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith((".txt", ".txt.gz", ".jsonl", ".jsonl.gz")))
        if not files:
            raise UserError(f"corpus: no .txt/.jsonl files under {str(p)!r}")
        return files
    if not p.is_file():
        raise UserError(f"corpus: {str(p)!r} does not exist; give a text file, a directory or nothing (the suite's text)")
    return [p]


class SpanCorruptionStream:
    """Resumable stream of span-corrupted examples; state = where the current chunk starts."""

    def __init__(self, tokenizer: Tokenizer, corpus: str | Path | None, input_length: int, target_length: int,
                 vocab_size: int, seed: int, noise_density: float = 0.15, mean_span_length: float = 3.0):
        self.tokenizer, self.vocab_size, self.seed = tokenizer, vocab_size, seed
        self.sentinels = min(MAX_SENTINELS, vocab_size - tokenizer.vocab_size)
        if self.sentinels < 1:
            raise UserError(f"model.vocab_size {vocab_size} leaves no room above the tokenizer's {tokenizer.vocab_size} ids for sentinels")
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        n = raw_length(input_length, target_length, noise_density, mean_span_length)
        # Fewer spans than sentinels: shorten the chunk until its span count fits.
        while n > 2 and round(round(n * noise_density) / mean_span_length) > self.sentinels:
            n -= 1
        self.chunk = n
        self.docs = _SuiteDocs() if corpus is None else _FileDocs(corpus_files(corpus))
        self.restore({"cursor": self.docs.start(), "offset": 0, "chunks": 0})

    def _load(self, cursor) -> None:
        text, self._next_cursor = self.docs.read(cursor)
        ids = self.tokenizer.encode(text)
        self._docs.append([cursor, len(ids)])
        self._buf.extend(ids)

    def next(self) -> Encoded:
        while len(self._buf) < self.chunk:
            self._load(self._next_cursor)
        tokens, self._buf = self._buf[: self.chunk], self._buf[self.chunk :]
        used = self.chunk
        while used and self._docs[0][1] - self._offset <= used:  # advance past fully used documents
            used -= self._docs[0][1] - self._offset
            self._docs.pop(0)
            self._offset = 0
        self._offset += used
        rng = np.random.default_rng([self.seed, self._chunks])
        self._chunks += 1
        mask = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_span_length, rng, self.sentinels)
        return span_corrupt(tokens, mask, self.vocab_size)

    def state(self) -> dict:
        cursor = self._docs[0][0] if self._docs else self._next_cursor
        return {"cursor": cursor, "offset": self._offset, "chunks": self._chunks}

    def restore(self, state: dict) -> None:
        self._docs: list[list] = []
        self._buf: list[int] = []
        self._offset, self._chunks = int(state["offset"]), int(state["chunks"])
        self._next_cursor = state["cursor"]
        if self._offset:
            self._load(state["cursor"])
            self._buf = self._buf[self._offset :]


def span_corruption_batches(tokenizer: Tokenizer, family: str, batch_size: int, input_length: int,
                            target_length: int, seed: int, vocab_size: int, corpus: str | Path | None = None, *,
                            process_index: int = 0, process_count: int = 1, noise_density: float = 0.15,
                            mean_span_length: float = 3.0, window: int | None = None) -> BatchIterator:
    """Packed span-corruption batches (same format and state/restore as make_batches)."""
    stream = SpanCorruptionStream(tokenizer, corpus, input_length, target_length, vocab_size, seed,
                                  noise_density, mean_span_length)
    return BatchIterator(stream, tokenizer, family, batch_size, input_length, target_length, seed, window=window,
                         process_index=process_index, process_count=process_count)


def corpus_text(corpus: str | Path | None, limit: int) -> Iterator[str]:
    """Up to `limit` documents of a corpus (e.g. to train a SentencePiece model on it)."""
    docs = _SuiteDocs() if corpus is None else _FileDocs(corpus_files(corpus))
    cursor = docs.start()
    for _ in range(limit):
        text, cursor = docs.read(cursor)
        yield text
