"""The decoding loop on a tiny fake step function: greedy, EOS stop, max-new-tokens,
sampling with temperature and top-k, all jitted."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers.eval.decoding import EOS_ID, TextGenerator, decode_loop, select_tokens

V = 16


def counting_step(state, tokens):
    """Fake model: predicts token+1 (mod V, skipping pad/eos), except a row predicts EOS
    once it has taken `stop_after[row]` steps. The state counts steps and records inputs."""
    steps, stop_after, fed = state
    nxt = jnp.where(tokens + 1 >= V, 2, jnp.maximum(tokens + 1, 2))
    nxt = jnp.where(steps + 1 >= stop_after, EOS_ID, nxt)
    logits = jax.nn.one_hot(nxt, V) * 10.0
    fed = fed.at[jnp.arange(tokens.shape[0]), steps].set(tokens)
    return logits, (steps + 1, stop_after, fed)


def _run(first, stop_after, max_new, **kw):
    state = (jnp.zeros_like(first), jnp.asarray(stop_after), jnp.full((first.shape[0], 32), -1))
    fn = jax.jit(functools.partial(decode_loop, counting_step, max_new_tokens=max_new, **kw))
    return np.asarray(fn(state, first, jax.random.PRNGKey(0)))


def test_greedy_stops_rows_at_eos_and_pads_after():
    out = _run(jnp.array([3, 5, 0]), [3, 1, 100], max_new=6)
    assert out.tolist() == [
        [4, 5, EOS_ID, 0, 0, 0],
        [EOS_ID, 0, 0, 0, 0, 0],
        [2, 3, 4, 5, 6, 7],  # never stops: cut at max_new_tokens
    ]


def test_loop_ends_early_when_all_rows_finished():
    calls = []

    def step(state, tokens):
        jax.debug.callback(lambda: calls.append(1))  # runs once per executed step
        return counting_step(state, tokens)
    first = jnp.array([3, 5])
    state = (jnp.zeros_like(first), jnp.array([2, 3]), jnp.full((2, 32), -1))
    out = jax.jit(lambda s, t: decode_loop(step, s, t, jax.random.PRNGKey(0), max_new_tokens=20))(state, first)
    jax.effects_barrier()
    assert np.asarray(out)[:, :4].tolist() == [[4, EOS_ID, 0, 0], [6, 7, EOS_ID, 0]]
    assert len(calls) == 3  # not 20


def test_fed_tokens_are_the_previous_outputs():
    first = jnp.array([0, 7])
    state = (jnp.zeros_like(first), jnp.array([100, 100]), jnp.full((2, 32), -1))

    def loop(s, t):
        carry_out = decode_loop(counting_step, s, t, jax.random.PRNGKey(0), max_new_tokens=4)
        return carry_out
    out = np.asarray(jax.jit(loop)(state, first))
    assert out.tolist() == [[2, 3, 4, 5], [8, 9, 10, 11]]


def test_select_tokens_greedy_topk_and_temperature():
    logits = jnp.log(jnp.array([[0.05, 0.05, 0.5, 0.3, 0.1]]))
    assert int(select_tokens(logits, jax.random.PRNGKey(0), 0.0, 0)[0]) == 2
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    batch = jnp.repeat(logits, 4000, axis=0)
    sample = jax.jit(jax.vmap(lambda k, l: select_tokens(l[None], k, 1.0, 2)[0]))(keys, batch)
    counts = np.bincount(np.asarray(sample), minlength=5)
    assert counts[0] == counts[1] == counts[4] == 0  # top-2 only
    assert counts[2] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    full = np.bincount(np.asarray(jax.jit(jax.vmap(lambda k, l: select_tokens(l[None], k, 1.0, 0)[0]))(keys, batch)), minlength=5)
    assert full[4] / 4000 == pytest.approx(0.1, abs=0.02)
    cold = np.bincount(np.asarray(jax.jit(jax.vmap(lambda k, l: select_tokens(l[None], k, 0.05, 0)[0]))(keys, batch)), minlength=5)
    assert cold[2] / 4000 > 0.99  # low temperature approaches greedy


def test_sampling_top_k_1_equals_greedy_and_samples_differ_by_key():
    first = jnp.array([3, 5, 0])
    greedy = _run(first, [4, 2, 100], max_new=5)
    assert (_run(first, [4, 2, 100], max_new=5, temperature=0.7, top_k=1) == greedy).all()

    def noisy(state, tokens):
        logits = jnp.zeros((tokens.shape[0], V)).at[:, EOS_ID].set(-1e9)
        return logits, state
    run = jax.jit(lambda key: decode_loop(noisy, (), jnp.zeros((8,), jnp.int32), key, max_new_tokens=6, temperature=1.0))
    a, b = np.asarray(run(jax.random.PRNGKey(0))), np.asarray(run(jax.random.PRNGKey(1)))
    assert (a != b).any() and len({tuple(r) for r in a}) > 1


class _FakeTokenizer:
    def encode(self, text):
        return [3 + (ord(c) % 10) for c in text]

    def decode(self, ids):
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i > 2:
                out.append(chr(ord("a") + i - 3))
        return "".join(out)


def test_text_generator_order_padding_and_samples(monkeypatch):
    """TextGenerator against a stand-in of trainers.models' prefill/decode_step: the prompt's
    last token (EOS) seeds a counter, so each output depends on its own prompt."""
    from trainers import models

    def prefill(cfg, params, inputs, max_decode_len):
        length = jnp.sum(inputs != 0, axis=1)
        return {"len": length, "t": jnp.zeros_like(length)}

    def decode_step(cfg, params, state, tokens):
        nxt = jnp.where(state["t"] >= state["len"] % 3 + 1, EOS_ID, 3 + state["len"] % 7)
        return jax.nn.one_hot(nxt, V) * 5.0, {**state, "t": state["t"] + 1}

    monkeypatch.setattr(models, "prefill", prefill)
    monkeypatch.setattr(models, "decode_step", decode_step)
    from trainers.eval import decoding
    decoding._generate.clear_cache()  # no trace of the real models may be reused here

    class Cfg:  # hashable stand-in for a ModelConfig
        family = "t5"
    gen = TextGenerator(Cfg(), {}, _FakeTokenizer(), max_new_tokens=5, batch_size=2)
    prompts = ["abcdef", "x", "hello there"]
    out = gen(prompts)
    assert [len(o) for o in out] == [1, 1, 1]
    for p, (o,) in zip(prompts, out):
        n = len(p) + 1  # + EOS
        assert o == chr(ord("a") + n % 7) * (n % 3 + 1)
    samples = gen(prompts, num_samples=3, temperature=0.7, top_k=2)
    assert [len(s) for s in samples] == [3, 3, 3]
    assert TextGenerator(Cfg(), {}, _FakeTokenizer(), max_prompt_tokens=4).encode("abcdefgh")[-1] == EOS_ID
    assert len(TextGenerator(Cfg(), {}, _FakeTokenizer(), max_prompt_tokens=4).encode("abcdefgh")) == 4
