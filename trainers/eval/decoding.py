"""Batched autoregressive decoding with a KV cache, for both model families.

`decode_loop` is the jitted core: given a step function (state, tokens[B]) -> (logits[B,V],
state) it runs greedy or sampled (temperature, top-k) decoding inside `jax.lax.while_loop`,
stopping a row at EOS and the whole batch when every row stopped or `max_new_tokens` were
produced. `TextGenerator` wraps it around `trainers.models.prefill` / `decode_step`:
prompts become token rows (prompt + EOS, as in training), right-padded into length buckets
so that a few compiled shapes serve a whole benchmark.

Both families take the whole prompt in `prefill` and are fed token 0 first (the
encoder-decoder's start token; the decoder-only model feeds its held-back last prompt
token instead), so the first generated token comes out of `decode_step` like every later one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[Any, jnp.ndarray], tuple[jnp.ndarray, Any]]

PAD_ID = 0
EOS_ID = 1


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


def decode_loop(step_fn: StepFn, state: Any, first_tokens: jnp.ndarray, rng: jax.Array, *,
                max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> jnp.ndarray:
    """Generate up to `max_new_tokens` tokens per row -> [B, max_new_tokens] int32.

    A row's EOS is kept in the output and everything after it is `pad_id`. Traceable (call
    it inside jit); the loop ends early once every row has produced EOS."""
    batch = first_tokens.shape[0]
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros((batch,), bool)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, state, tokens, out, done, rng = carry
        logits, state = step_fn(state, tokens)
        rng, sub = jax.random.split(rng)
        nxt = select_tokens(logits, sub, temperature, top_k)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        done = done | (nxt == eos_id)
        return i + 1, state, nxt, out, done, rng

    carry = (jnp.int32(0), state, first_tokens.astype(jnp.int32), out, done, rng)
    return jax.lax.while_loop(cond, body, carry)[3]


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "samples"))
def _generate(cfg, params, inputs, rng, *, max_new_tokens, temperature, top_k, samples=1):
    """[P, L] prompts -> [P * samples, max_new_tokens] tokens, row p * samples + s being sample
    s of prompt p. The prompts are prefilled once and their states repeated per sample, so
    self-consistency pays for each prompt's prefill once, not `samples` times."""
    from trainers import models

    state = models.prefill(cfg, params, inputs, max_new_tokens)
    if samples > 1:
        state = models.repeat_state(state, samples)
    first = jnp.full((inputs.shape[0] * samples,), PAD_ID, jnp.int32)
    step = lambda s, t: models.decode_step(cfg, params, s, t)  # noqa: E731
    return decode_loop(step, state, first, rng, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k)


def _bucket(n: int, minimum: int = 32) -> int:
    """Next power of two >= n: a handful of compiled prompt shapes per benchmark."""
    size = minimum
    while size < n:
        size *= 2
    return size


class TextGenerator:
    """Prompts in, decoded continuations out, for one model and tokenizer.

    `max_prompt_tokens` > 0 keeps only the last tokens of longer prompts (the question and
    the nearest exemplars survive; the header goes first) and pads every batch to exactly
    that width, so one compiled program serves the whole evaluation. With 0, prompts are
    kept whole and padded to the next power of two."""

    def __init__(self, model_cfg, params, tokenizer, *, max_new_tokens: int = 64,
                 batch_size: int = 8, max_prompt_tokens: int = 0):
        self.cfg, self.params, self.tokenizer = model_cfg, params, tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens

    def encode(self, text: str) -> list[int]:
        ids = [t for t in self.tokenizer.encode(text) if t != PAD_ID] + [EOS_ID]
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            ids = ids[-self.max_prompt_tokens:]
        return ids

    def _batch(self, rows: list[list[int]]) -> np.ndarray:
        width = self.max_prompt_tokens or _bucket(max(len(r) for r in rows))
        inputs = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            inputs[i, : len(r)] = r
        return inputs

    def __call__(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0) -> list[list[str]]:
        """One list of `num_samples` continuations per prompt (greedy when temperature is 0)."""
        encoded = [self.encode(p) for p in prompts]
        # Prompts ordered by length so batches pad little; a batch holds `per_batch` prompts
        # and decodes all their samples together (at least one prompt's worth of samples).
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        per_batch = max(1, self.batch_size // num_samples)
        results: list[list[str]] = [[""] * num_samples for _ in prompts]
        base = jax.random.PRNGKey(seed)
        for start in range(0, len(order), per_batch):
            chunk = order[start: start + per_batch]
            # Fill the last batch with copies so every batch has the compiled shape.
            padded = chunk + [chunk[0]] * (per_batch - len(chunk))
            inputs = self._batch([encoded[i] for i in padded])
            tokens = _generate(self.cfg, self.params, jnp.asarray(inputs), jax.random.fold_in(base, start),
                               max_new_tokens=self.max_new_tokens, temperature=float(temperature),
                               top_k=int(top_k), samples=num_samples)
            tokens = np.asarray(tokens)
            for p, i in enumerate(chunk):
                for s in range(num_samples):
                    results[i][s] = self.tokenizer.decode([int(t) for t in tokens[p * num_samples + s]])
        return results
