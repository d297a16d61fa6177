"""Tokenizers with T5's special ids: pad 0, eos 1, unk 2.

- "byte": UTF-8 bytes offset by 3 (vocabulary 259); needs nothing and never sees an unknown.
- "spm": a SentencePiece unigram model trained on the data source (like T5's vocabulary,
  but small), cached under FLANSCALE_HOME/tokenizers/<hash>.model so every cell over the
  same source shares it.
- a path to a user's .model file, e.g. T5's `spiece.model` (its ids already follow the
  convention).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Protocol

from trainers.spec import DataConfig, UserError, to_dict

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPM_DEFAULT_VOCAB = 1000
SPM_TRAIN_SENTENCES = 20_000


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes + 3. Ids 0-2 are the specials, so byte b is id b + 3."""

    name = "byte"
    vocab_size = 259
    pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if 3 <= i < 259:  # pad, unk and ids past the vocabulary (sentinels) carry no bytes
                out.append(i - 3)
        return out.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes, name: str):
        import sentencepiece as spm

        self.name = name
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise UserError(f"{name}: not a valid SentencePiece model ({e.__class__.__name__})") from None
        if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
            raise UserError(
                f"{name}: pad id {self._sp.pad_id()} / eos id {self._sp.eos_id()}; flanscale needs pad 0 and eos 1 (T5 convention)"
            )
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id, self.eos_id, self.unk_id = PAD_ID, EOS_ID, self._sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        kept = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i != PAD_ID and i < self.vocab_size:
                kept.append(i)
        return self._sp.decode(kept)


def load_spm(path: str | Path) -> SentencePieceTokenizer:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data.tokenizer: SentencePiece model {str(p)!r} does not exist; give 'byte', 'spm' or a path to a .model file")
    return SentencePieceTokenizer(p.read_bytes(), str(p))


def train_spm(sentences: Iterable[str], vocab_size: int) -> bytes:
    """Train a unigram SentencePiece model with T5's special ids; returns the model proto."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,  # small corpora may not support the full size; take what fits
        max_sentence_length=1 << 16,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _spm_key(cfg: DataConfig, vocab_size: int) -> str:
    # Only what changes the training text: the data source, not the cell's selection of it.
    d = to_dict(cfg)
    keep = {k: d[k] for k in ("source", "paths", "examples_per_task", "version")}
    keep["vocab_size"] = vocab_size
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _training_sentences(cfg: DataConfig, home: Path | str, limit: int) -> Iterable[str]:
    """Inputs and targets drawn (seed 0) from the whole data source: all tasks, all formats.

    The vocabulary deliberately ignores the cell's task count and formats, so every cell
    of a sweep over the same source shares one tokenizer (and one pretrained base model).
    """
    from trainers.data.mixtures import MixtureStream, build_registry

    registry = build_registry(cfg, home)
    full = dataclasses.replace(cfg, task_count=len(registry), formats=("all",), with_cot=True, mixture="A",
                               proportions=(), caps=())
    stream = MixtureStream(registry, full, seed=0, length_fn=len)
    for _ in range(limit // 2):
        _, inputs, targets = stream.next()
        yield inputs
        yield targets


def load_tokenizer(cfg: DataConfig, home: Path | str, vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer named by cfg.tokenizer ("byte", "spm" or a .model path)."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer != "spm":
        return load_spm(cfg.tokenizer)
    size = vocab_size or SPM_DEFAULT_VOCAB
    path = Path(home) / "tokenizers" / f"{_spm_key(cfg, size)}.model"
    if not path.is_file():
        proto = train_spm(_training_sentences(cfg, home, SPM_TRAIN_SENTENCES), size)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so concurrent cells never read a half-written model.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(proto)
        os.replace(tmp, path)
    return load_spm(path)
