"""Batched autoregressive decoding with a KV cache, for both model families.

`decode_loop` is the jitted core: given a step function (state, tokens[B]) -> (logits[B,V],
state) it runs greedy or sampled (temperature, top-k) decoding inside `jax.lax.while_loop`,
stopping a row at EOS or when its output ends with a stop sequence's token ids, and the whole
batch when every row stopped or `max_new_tokens` were produced. `generate_ids` runs
`trainers.models.prefill` and the loop over `decode_step` as one program on an `EvalMesh`
(trainers/eval/placement.py): parameters sharded as training shards them, prompt rows and the
KV cache split over the data axes, the cache's heads over the heads' mesh axis. `TextGenerator`
wraps it: prompts become token rows (prompt + EOS, as in training), right-padded into length
buckets so that a few compiled shapes serve a whole benchmark; outputs are cut at the first
stop sequence, in tokens and again in text.

Both families take the whole prompt in `prefill` and are fed token 0 first (the
encoder-decoder's start token; the decoder-only model feeds its held-back last prompt
token instead), so the first generated token comes out of `decode_step` like every later one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainers.eval.placement import EvalMesh

StepFn = Callable[[Any, jnp.ndarray], tuple[jnp.ndarray, Any]]

PAD_ID = 0
EOS_ID = 1

# What ends a few-shot answer: the blank line that separates exemplars in every prompt format
# (MMLU's "Answer: X" blocks, TyDiQA's "Passage:" blocks, the "Q: ... A: ..." blocks of CoT,
# BBH and MGSM; rationales never hold a blank line, the CoT-prompt files split exemplars on
# it), and the next exemplar's "Q:" after a single newline. "\n\nQ:" would add nothing: text
# holding it holds "\n\n" at the same place. "\nQ:" also matters where a tokenizer folds
# newlines into spaces (SentencePiece's default normalization, T5's vocabulary): "\n\n" then
# has no tokens at all, and the next question's "Q:" tokens are what can still end a row.
DEFAULT_STOP = ("\n\n", "\nQ:")
# Stop sequences are also tokenized after this text, since a subword tokenizer splits a
# string differently at the start of a text than after the answer it follows.
_ANCHOR = "."


def select_tokens(logits: jnp.ndarray, rng: jax.Array, temperature: float, top_k: int) -> jnp.ndarray:
    """[B, V] logits -> [B] tokens: argmax when temperature == 0, else a sample from
    softmax(logits / temperature) restricted to the top_k most likely tokens (0 = all)."""
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _stop_table(stop_ids: Sequence[Sequence[int]]) -> np.ndarray | None:
    """[S, W] stop sequences right-aligned in a window of the longest one's width; -1 marks
    the positions a shorter sequence does not constrain."""
    seqs = [tuple(int(t) for t in s) for s in stop_ids if len(s)]
    if not seqs:
        return None
    width = max(len(s) for s in seqs)
    table = np.full((len(seqs), width), -1, np.int32)
    for row, seq in enumerate(seqs):
        table[row, width - len(seq):] = seq
    return table


def ends_with_stop(recent: jnp.ndarray, table: np.ndarray) -> jnp.ndarray:
    """[B, W] last generated tokens (-1 before the first) -> [B] bool: the row ends with one
    of the table's sequences."""
    match = (recent[:, None, :] == table[None]) | (table[None] < 0)  # [B, S, W]
    return jnp.any(jnp.all(match, axis=-1), axis=-1)


def decode_loop(step_fn: StepFn, state: Any, first_tokens: jnp.ndarray, rng: jax.Array, *,
                max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                eos_id: int = EOS_ID, pad_id: int = PAD_ID,
                stop_ids: Sequence[Sequence[int]] = (), row_ids: jnp.ndarray | None = None) -> jnp.ndarray:
    """Generate up to `max_new_tokens` tokens per row -> [B, max_new_tokens] int32.

    A row ends at EOS or once its output ends with one of `stop_ids` (token-id sequences);
    the EOS or stop tokens are kept in the output and everything after them is `pad_id`.
    Sampling draws row r's token at step i with the key fold_in(fold_in(rng, row_ids[r]), i)
    (row_ids: 0..B-1 unless given), so a row's samples depend on its id alone, not on the
    rows beside it, the batch size or how the batch is split over devices.
    Traceable (call it inside jit); the loop ends early once every row has ended."""
    batch = first_tokens.shape[0]
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros((batch,), bool)
    table = _stop_table(stop_ids)
    # Only the last few tokens can complete a stop sequence, so only they are carried.
    recent = jnp.full((batch, 1 if table is None else table.shape[1]), -1, jnp.int32)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(batch) if row_ids is None else row_ids)
    select = jax.vmap(lambda key, row: select_tokens(row[None], key, temperature, top_k)[0])

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, state, tokens, out, done, recent = carry
        logits, state = step_fn(state, tokens)
        nxt = select(jax.vmap(jax.random.fold_in, (0, None))(row_keys, i), logits)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        done = done | (nxt == eos_id)
        if table is not None:
            recent = jnp.concatenate([recent[:, 1:], nxt[:, None]], axis=1)
            done = done | ends_with_stop(recent, table)
        return i + 1, state, nxt, out, done, recent

    carry = (jnp.int32(0), state, first_tokens.astype(jnp.int32), out, done, recent)
    return jax.lax.while_loop(cond, body, carry)[3]


def _generate_program(cfg, placement: EvalMesh, max_new_tokens: int, temperature: float, top_k: int,
                      samples: int, stop_ids: tuple) -> Callable:
    """(params, (prompts [P, L], prompt ids [P]), (rng,)) -> [P * samples, max_new_tokens]
    tokens, row p * samples + s being sample s of prompt p. The prompts are prefilled once
    and their states repeated per sample, so self-consistency pays for each prompt's prefill
    once, not `samples` times. The state (KV cache) keeps `placement`'s layout throughout."""
    from trainers import models

    def program(params, rows, replicated):
        inputs, prompt_ids = rows
        (rng,) = replicated
        state = placement.constrain_state(cfg, models.prefill(cfg, params, inputs, max_new_tokens))
        if samples > 1:
            state = placement.constrain_state(cfg, models.repeat_state(state, samples))
        row_ids = (prompt_ids[:, None] * samples + jnp.arange(samples)[None, :]).reshape(-1)

        def step(s, t):
            logits, s = models.decode_step(cfg, params, s, t)
            return logits, placement.constrain_state(cfg, s)

        first = jnp.full((inputs.shape[0] * samples,), PAD_ID, jnp.int32)
        return decode_loop(step, state, first, rng, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, stop_ids=stop_ids, row_ids=row_ids)

    return program


def generate_ids(cfg, params, inputs, rng, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 samples: int = 1, stop_ids: Sequence[Sequence[int]] = (), prompt_ids=None,
                 placement: EvalMesh | None = None) -> np.ndarray:
    """[P, L] right-padded prompts -> [P * samples, max_new_tokens] token ids on the host (see
    `_generate_program`), decoded on `placement`'s mesh (default: one local device).

    `prompt_ids` [P] (default 0..P-1) name the prompts for sampling (see `decode_loop`). Rows
    are padded to a multiple of the data-parallel size with copies of the first prompt."""
    placement = placement or EvalMesh.local()
    inputs = np.asarray(inputs, np.int32)
    n = len(inputs)
    prompt_ids = np.arange(n, dtype=np.int32) if prompt_ids is None else np.asarray(prompt_ids, np.int32)
    extra = placement.rows(n) - n
    inputs = np.concatenate([inputs, np.repeat(inputs[:1], extra, axis=0)])
    prompt_ids = np.concatenate([prompt_ids, np.repeat(prompt_ids[:1], extra)])
    stops = tuple(tuple(int(t) for t in s) for s in stop_ids)
    statics = (max_new_tokens, float(temperature), int(top_k), samples, stops)
    out = placement.run(("generate", cfg, statics), lambda: _generate_program(cfg, placement, *statics),
                        placement.put_params(cfg, params), rows=(inputs, prompt_ids),
                        replicated=(np.asarray(jax.random.key_data(rng)),))
    return np.asarray(out)[: n * samples]


def stop_token_ids(tokenizer, stop_sequences: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The token-id sequences that end a row for these stop strings: each string tokenized
    alone and after `_ANCHOR` (subword tokenizers split differently at a text's start).

    A sequence is kept only if it decodes back to the string, or, for a tokenizer that folds
    whitespace, to the string's visible part; a string that is only whitespace to such a
    tokenizer ("\n\n" to SentencePiece's default normalization) gets no ids and is left to
    the cut in text."""
    def clean(ids):
        return tuple(int(t) for t in ids if int(t) != PAD_ID)

    anchor = clean(tokenizer.encode(_ANCHOR))
    out: list[tuple[int, ...]] = []
    for stop in stop_sequences:
        after = clean(tokenizer.encode(_ANCHOR + stop))
        candidates = [clean(tokenizer.encode(stop))]
        if after[: len(anchor)] == anchor:
            candidates.append(after[len(anchor):])
        for ids in candidates:
            text = tokenizer.decode(list(ids)) if ids else ""
            renders = text == stop or (stop.strip() != "" and text.strip() == stop.strip())
            if ids and renders and EOS_ID not in ids and ids not in out:
                out.append(ids)
    return tuple(out)


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[Sequence[int]]) -> list[int]:
    """The ids before EOS and before the earliest occurrence of any stop sequence."""
    ids = list(ids)
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    end = len(ids)
    for seq in stop_ids:
        n = len(seq)
        for start in range(0, min(end, len(ids) - n + 1)):
            if tuple(ids[start:start + n]) == tuple(seq):
                end = start
                break
    return ids[:end]


def cut_text(text: str, stop_sequences: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop string (the stop itself removed)."""
    end = len(text)
    for stop in stop_sequences:
        at = text.find(stop)
        if at != -1:
            end = min(end, at)
    return text[:end]


def _bucket(n: int, minimum: int = 32) -> int:
    """Next power of two >= n: a handful of compiled shapes per benchmark."""
    size = minimum
    while size < n:
        size *= 2
    return size


def prompt_width(n: int, cap: int = 0) -> int:
    """The width a batch of prompts is padded to when its longest has `n` tokens: `n` rounded
    up to a multiple of a sixteenth of the next power of two (at least 32 tokens), so under an
    eighth of a long row is padding and each octave of lengths compiles at most 8 shapes; at
    most `cap`, when given (prompts are cut to it). The encoder's cost grows with the width,
    and at a small model's scale it is most of an evaluation's."""
    step = max(32, _bucket(n) // 16)
    width = -(-n // step) * step
    return min(width, cap) if cap else width


class TextGenerator:
    """Prompts in, decoded continuations out, for one model and tokenizer.

    `max_prompt_tokens` > 0 keeps only the last tokens of longer prompts (the question and
    the nearest exemplars survive; the header goes first); with 0, prompts are kept whole.
    Prompts are batched by length and each batch padded to `prompt_width` of its longest.

    `stop_sequences` (e.g. `DEFAULT_STOP`) end a row inside the decoding loop once its
    tokens end with one of them, and every continuation is cut before the first one, once
    in tokens and once in the decoded text: token boundaries of a subword tokenizer need
    not fall where the string starts, so the loop may miss a stop that the text shows.

    Decoding runs on `placement`'s mesh (default: one local device) with the parameters in
    their shardings; a batch holds `batch_size` rows rounded up to a multiple of the
    data-parallel size. Outputs do not depend on the mesh or the batch size: rows are
    independent and each prompt's samples are drawn with keys of its own."""

    def __init__(self, model_cfg, params, tokenizer, *, max_new_tokens: int = 64,
                 batch_size: int = 8, max_prompt_tokens: int = 0, stop_sequences: Sequence[str] = (),
                 placement: EvalMesh | None = None):
        self.placement = placement or EvalMesh.local()
        self.cfg, self.tokenizer = model_cfg, tokenizer
        self.params = self.placement.put_params(model_cfg, params)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.stop_sequences = tuple(s for s in stop_sequences if s)
        self.stop_ids = stop_token_ids(tokenizer, self.stop_sequences)

    def encode(self, text: str) -> list[int]:
        ids = [t for t in self.tokenizer.encode(text) if t != PAD_ID] + [EOS_ID]
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            ids = ids[-self.max_prompt_tokens:]
        return ids

    def _batch(self, rows: list[list[int]]) -> np.ndarray:
        width = prompt_width(max(len(r) for r in rows), self.max_prompt_tokens)
        inputs = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            inputs[i, : len(r)] = r
        return inputs

    def ids(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
            top_k: int = 0, seed: int = 0, max_new_tokens: int | None = None) -> list[np.ndarray]:
        """One [num_samples, max_new_tokens] array of generated token ids per prompt
        (`max_new_tokens` defaults to the generator's own)."""
        new = max_new_tokens or self.max_new_tokens
        encoded = [self.encode(p) for p in prompts]
        # Prompts ordered by length so batches pad little; a batch holds `per_batch` prompts
        # and decodes all their samples together (at least one prompt's worth of samples).
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        per_batch = self.placement.rows(max(1, self.batch_size // num_samples))
        results: list[np.ndarray] = [np.empty((0, new), np.int32)] * len(prompts)
        rng = jax.random.PRNGKey(seed)
        for start in range(0, len(order), per_batch):
            chunk = order[start: start + per_batch]
            # Fill the last batch with copies so every batch has the compiled shape.
            padded = chunk + [chunk[0]] * (per_batch - len(chunk))
            tokens = generate_ids(self.cfg, self.params, self._batch([encoded[i] for i in padded]), rng,
                                  max_new_tokens=new, temperature=temperature, top_k=top_k,
                                  samples=num_samples, stop_ids=self.stop_ids, prompt_ids=padded,
                                  placement=self.placement)
            for p, i in enumerate(chunk):
                results[i] = tokens[p * num_samples: (p + 1) * num_samples]
        return results

    def __call__(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0, max_new_tokens: int | None = None) -> list[list[str]]:
        """One list of `num_samples` continuations per prompt (greedy when temperature is 0)."""
        rows = self.ids(prompts, num_samples=num_samples, temperature=temperature, top_k=top_k, seed=seed,
                        max_new_tokens=max_new_tokens)
        return [[self.text(r) for r in prompt_rows] for prompt_rows in rows]

    def text(self, row: Sequence[int]) -> str:
        """One generated row -> its continuation, cut at EOS and before the first stop
        sequence, whichever of its token ids or its text shows first: a stop string may
        start inside a token ("b\n" + "\n"), and a tokenizer that folds newlines into
        spaces decodes the ids of "\nQ:" without the newline."""
        ids = cut_at_stop([int(t) for t in row], ())
        by_text = cut_text(self.tokenizer.decode(ids), self.stop_sequences)
        cut = cut_at_stop(ids, self.stop_ids)
        if len(cut) == len(ids):
            return by_text
        return min(by_text, cut_text(self.tokenizer.decode(cut), self.stop_sequences), key=len)
