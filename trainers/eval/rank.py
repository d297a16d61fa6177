"""Log-probabilities of answer options given a prompt (rank classification), both families.

A question is a prompt and its options; every option gets log P(option | prompt) under the
model, read exactly as training reads a (input, target) example:

- the prompt is encoded as `TextGenerator.encode` encodes it (tokens + EOS, the longest
  prompts left-truncated to `max_prompt_tokens`), which is how training encodes inputs;
- an option is scored as the target `option tokens + EOS`: training targets end in EOS, and
  the EOS is what tells an option from a longer one it prefixes ("Paris" vs "Paris, France"):
  without it the shorter option's log-probability could never fall below the longer one's.

`shared=True` encodes each prompt once per question (`trainers.models.option_logits`: one
T5 encoder pass, or one decoder-only prefix pass, whose keys/values every option row
reuses). `shared=False` is the reference: every (prompt, option) pair is one example of a
training batch (`trainers.data.packing.build_batch`, one example per row) run through the
model's full forward pass, so the prompt is encoded once per option. Both give the same
numbers; the shared path does a fraction of the work when prompts are long and options short.

Questions are sorted by length and batched `batch_size` at a time; prompts are padded to
`decoding.prompt_width`, options and option rows to powers of two, so a handful of compiled
programs serve a whole benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainers.data.packing import build_batch
from trainers.eval.decoding import EOS_ID, PAD_ID, TextGenerator, _bucket, prompt_width
from trainers.eval.placement import EvalMesh
from trainers.spec import UserError

MIN_TARGET_WIDTH = 8  # option rows are short; one bucket covers single letters to short phrases


@dataclass(frozen=True)
class OptionScore:
    logprob: float  # sum of log P(token) over the option's tokens and the EOS after them
    num_tokens: int  # tokens scored, the EOS included
    num_chars: int  # len(option text), for length normalization


def _target_logprobs(logits, targets):
    """[R, L, V] logits, [R, L] targets -> [R, L] log P(target) (float32)."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _shared_program(cfg):
    from trainers import models

    def program(params, rows, _):
        prompts, prompt_index, tokens, targets = rows
        logits = models.option_logits(cfg, params, prompts, prompt_index, tokens)
        return jnp.where(targets != PAD_ID, _target_logprobs(logits, targets), 0.0)

    return program


def _full_program(cfg):
    from trainers import models

    def program(params, rows, _):
        (batch,) = rows
        logits = models.build(cfg).apply({"params": params}, batch, True)
        return _target_logprobs(logits, batch["decoder_target_tokens"]) * batch["decoder_loss_weights"]

    return program


class OptionScorer:
    """(prompts, options per prompt) -> an OptionScore per option, for one model and tokenizer.

    Questions may have different numbers of options and options different lengths; a
    question with no options gets an empty list. Scoring runs on `placement`'s mesh (default:
    one local device); `batch_size` questions, and the option rows, are rounded up to a
    multiple of its data-parallel size."""

    def __init__(self, model_cfg, params, tokenizer, *, batch_size: int = 8, max_prompt_tokens: int = 0,
                 shared: bool = True, placement: EvalMesh | None = None):
        if batch_size < 1:
            raise UserError(f"rank classification batch_size: {batch_size!r} must be >= 1")
        if max_prompt_tokens < 0:
            raise UserError(f"rank classification max_prompt_tokens: {max_prompt_tokens!r} must be >= 0 (0 = no limit)")
        self.placement = placement or EvalMesh.local()
        self.cfg, self.tokenizer = model_cfg, tokenizer
        self.params = self.placement.put_params(model_cfg, params)
        # Questions per batch, a multiple of the data-parallel size like the prompt rows.
        self.batch_size = self.placement.rows(batch_size)
        self.max_prompt_tokens, self.shared = max_prompt_tokens, shared
        # The very encoder generation uses, so a prompt reads the same in both modes.
        self._prompts = TextGenerator(model_cfg, self.params, tokenizer, batch_size=batch_size,
                                      max_prompt_tokens=max_prompt_tokens, placement=self.placement)

    def encode_option(self, text: str) -> list[int]:
        return [t for t in self.tokenizer.encode(text) if t != PAD_ID] + [EOS_ID]

    def __call__(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[OptionScore]]:
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        if any(isinstance(o, str) for o in options):
            raise TypeError("options: one sequence of option strings per prompt, not a string")
        enc_prompts = [self._prompts.encode(p) for p in prompts]
        enc_options = [[self.encode_option(o) for o in opts] for opts in options]
        logprobs: list[list[float]] = [[0.0] * len(o) for o in options]
        # Similar lengths share a batch, so little of it is padding.
        order = sorted(range(len(prompts)), key=lambda q: (len(enc_prompts[q]), sum(map(len, enc_options[q])), q))
        order = [q for q in order if enc_options[q]]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            pairs = [(q, k) for q in chunk for k in range(len(enc_options[q]))]
            run = self._shared if self.shared else self._per_option
            sums = run(chunk, pairs, enc_prompts, enc_options)
            for (q, k), s in zip(pairs, sums):
                logprobs[q][k] = float(s)
        return [[OptionScore(lp, len(ids), len(text)) for lp, ids, text in zip(lps, ids_q, opts)]
                for lps, ids_q, opts in zip(logprobs, enc_options, options)]

    def _widths(self, chunk, pairs, enc_prompts, enc_options) -> tuple[int, int, int]:
        """(prompt width (`prompt_width`), target width, option rows), the last two powers of two."""
        width = prompt_width(max(len(enc_prompts[q]) for q in chunk), self.max_prompt_tokens)
        target_width = _bucket(max(len(enc_options[q][k]) for q, k in pairs), MIN_TARGET_WIDTH)
        return width, target_width, _bucket(len(pairs), self.batch_size)

    def _shared(self, chunk, pairs, enc_prompts, enc_options) -> np.ndarray:
        width, target_width, rows = self._widths(chunk, pairs, enc_prompts, enc_options)
        prompts = np.zeros((self.batch_size, width), np.int32)  # unused rows stay padding
        for i, q in enumerate(chunk):
            prompts[i, : len(enc_prompts[q])] = enc_prompts[q]
        prompt_index = np.zeros((rows,), np.int32)
        tokens = np.zeros((rows, target_width), np.int32)
        targets = np.zeros((rows, target_width), np.int32)
        slot = {q: i for i, q in enumerate(chunk)}
        for r, (q, k) in enumerate(pairs):
            target = enc_options[q][k]
            prompt_index[r] = slot[q]
            tokens[r, 1: len(target)] = target[:-1]  # shifted right after the start token 0
            targets[r, : len(target)] = target
        out = self.placement.run(("rank_shared", self.cfg), lambda: _shared_program(self.cfg), self.params,
                                 rows=(prompts, prompt_index, tokens, targets))
        return np.asarray(out, np.float64)[: len(pairs)].sum(axis=1)

    def _per_option(self, chunk, pairs, enc_prompts, enc_options) -> np.ndarray:
        width, target_width, rows = self._widths(chunk, pairs, enc_prompts, enc_options)
        examples = [[(enc_prompts[q], enc_options[q][k])] for q, k in pairs]
        examples += [[] for _ in range(rows - len(pairs))]  # empty rows: all padding, weight 0
        batch = build_batch(examples, self.cfg.family, width, target_width)
        out = self.placement.run(("rank_full", self.cfg), lambda: _full_program(self.cfg), self.params, rows=(batch,))
        return np.asarray(out, np.float64)[: len(pairs)].sum(axis=1)
