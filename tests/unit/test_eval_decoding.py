"""The decoding loop on a tiny fake step function: greedy, EOS stop, stop sequences,
max-new-tokens, sampling with temperature and top-k, all jitted; stop strings turned into
token ids and cut out of the text, also where token boundaries do not line up with them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers.data.tokenizer import ByteTokenizer
from trainers.eval.decoding import (DEFAULT_STOP, EOS_ID, TextGenerator, cut_at_stop, cut_text, decode_loop,
                                    select_tokens, stop_token_ids)

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
    monkeypatch.setattr(models, "decode_state_axes", lambda cfg: {"len": ("batch",), "t": ("batch",)})

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


def test_stop_sequences_end_rows_and_eos_still_stops():
    # Rows count upwards from their first token: 3 -> 4 5 6 ..., 0 -> 2 3 4 ..., 10 -> 11 12 ...
    first = jnp.array([3, 0, 10, 4])
    out = _run(first, [100, 100, 100, 2], max_new=8, stop_ids=((5, 6), (12,)))
    assert out.tolist() == [
        [4, 5, 6, 0, 0, 0, 0, 0],  # ends with the two-token stop
        [2, 3, 4, 5, 6, 0, 0, 0],
        [11, 12, 0, 0, 0, 0, 0, 0],  # the one-token stop
        [5, EOS_ID, 0, 0, 0, 0, 0, 0],  # EOS first: the stop (5, 6) never completes
    ]
    # Without stops the same rows run to max_new_tokens.
    assert _run(first[:1], [100], max_new=8).tolist() == [[4, 5, 6, 7, 8, 9, 10, 11]]


def test_a_stop_needs_all_its_tokens_in_order():
    # 6 alone, or 5 and 6 apart, is not the stop (5, 6); nor is (7, 5, 6) matched by a row
    # whose window starts empty: row 0 emits 5 6 at steps 1-2 with nothing before.
    out = _run(jnp.array([4, 5]), [100, 100], max_new=5, stop_ids=((7, 5, 6),))
    assert out.tolist() == [[5, 6, 7, 8, 9], [6, 7, 8, 9, 10]]
    out = _run(jnp.array([4, 5]), [100, 100], max_new=5, stop_ids=((6, 8),))
    assert out.tolist() == [[5, 6, 7, 8, 9], [6, 7, 8, 9, 10]]


def test_loop_ends_early_when_stop_sequences_end_every_row():
    calls = []

    def step(state, tokens):
        jax.debug.callback(lambda: calls.append(1))
        return counting_step(state, tokens)
    first = jnp.array([3, 4])
    state = (jnp.zeros_like(first), jnp.array([100, 100]), jnp.full((2, 32), -1))
    loop = jax.jit(lambda s, t: decode_loop(step, s, t, jax.random.PRNGKey(0), max_new_tokens=30, stop_ids=((7,),)))
    out = np.asarray(loop(state, first))
    jax.effects_barrier()
    assert out[:, :4].tolist() == [[4, 5, 6, 7], [5, 6, 7, 0]]
    assert len(calls) == 4  # not 30


class _PieceTokenizer:
    """A subword tokenizer over a fixed list of pieces (id = index + 3), longest match first;
    with `fold`, newlines become spaces before encoding, as SentencePiece's default
    normalization does."""

    def __init__(self, pieces, fold=False):
        self.pieces, self.fold = list(pieces), fold

    def encode(self, text):
        if self.fold:
            text = text.replace("\n", " ")
        ids, i = [], 0
        while i < len(text):
            best = max((p for p in self.pieces if text.startswith(p, i)), key=len)
            ids.append(3 + self.pieces.index(best))
            i += len(best)
        return ids

    def decode(self, ids):
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i >= 3:
                out.append(self.pieces[i - 3])
        return "".join(out)


PIECES = ["a", "b", ".", " ", "\n", "\n\n", "Q", ":", "b\n", " Q"]


def _ids(tok, *pieces):
    return [3 + tok.pieces.index(p) for p in pieces]


def test_stop_token_ids_alone_in_context_and_folded():
    byte = ByteTokenizer()
    assert stop_token_ids(byte, DEFAULT_STOP) == (tuple(b + 3 for b in b"\n\n"), tuple(b + 3 for b in b"\nQ:"))
    tok = _PieceTokenizer(PIECES)
    assert stop_token_ids(tok, ["\n\n", "\nQ:"]) == (tuple(_ids(tok, "\n\n")), tuple(_ids(tok, "\n", "Q", ":")))
    # Folded: "\n\n" is only spaces (no ids: left to the text cut); "\nQ:" is " Q" ":".
    folded = _PieceTokenizer(PIECES, fold=True)
    assert stop_token_ids(folded, ["\n\n", "\nQ:"]) == (tuple(_ids(folded, " Q", ":")),)
    assert stop_token_ids(byte, ["", "x"]) == ((ord("x") + 3,),)


def test_cut_at_stop_and_cut_text():
    assert cut_at_stop([5, 6, 7, 8, 6, 7], [(6, 7)]) == [5]
    assert cut_at_stop([5, 6, 7, 8], [(7, 8), (6,)]) == [5]  # the earliest of several stops
    assert cut_at_stop([5, EOS_ID, 6, 7], [(6, 7)]) == [5]
    assert cut_at_stop([5, 6], [(6, 7)]) == [5, 6]
    assert cut_text("B\n\nQ: next", DEFAULT_STOP) == "B"
    assert cut_text("So it is 4.\nQ: next", DEFAULT_STOP) == "So it is 4."
    rationale = "step one\nstep two. So the answer is 4."
    assert cut_text(rationale, DEFAULT_STOP) == rationale
    assert cut_text("", DEFAULT_STOP) == ""


def _scripted(monkeypatch, scripts) -> list:
    """Stand-ins of trainers.models' prefill/decode_step that emit a fixed token script per
    prompt (chosen by the prompt's length), then EOS. Returns the list that collects one
    entry per decoding step taken."""
    from trainers import models

    table = np.full((len(scripts), 16), EOS_ID, np.int32)
    for r, script in enumerate(scripts):
        table[r, :len(script)] = script

    def prefill(cfg, params, inputs, max_decode_len):
        return {"row": jnp.sum(inputs != 0, axis=1) - 2, "t": jnp.zeros(inputs.shape[0], jnp.int32)}

    steps = []

    def decode_step(cfg, params, state, tokens):
        jax.debug.callback(lambda: steps.append(1))
        nxt = jnp.asarray(table)[state["row"], state["t"]]
        return jax.nn.one_hot(nxt, 16) * 5.0, {**state, "t": state["t"] + 1}

    monkeypatch.setattr(models, "prefill", prefill)
    monkeypatch.setattr(models, "decode_step", decode_step)
    monkeypatch.setattr(models, "decode_state_axes", lambda cfg: {"row": ("batch",), "t": ("batch",)})
    return steps


def test_text_generator_cuts_at_stops_across_token_boundaries(monkeypatch):
    class Cfg:
        family = "t5"
    tok = _PieceTokenizer(PIECES)
    a, b, bn, nl, q, colon = _ids(tok, "a", "b", "b\n", "\n", "Q", ":")
    scripts = [
        [a, bn, nl, q, colon, a, a],  # "ab\n\nQ:aa": "\n\n" spans two tokens; "\nQ:" ends the row
        [a, b, a, b],  # no stop
    ]
    steps = _scripted(monkeypatch, scripts)
    # Prompt "a" -> [a, EOS] (2 ids: row 0), "aa" -> row 1.
    gen = TextGenerator(Cfg(), {}, tok, max_new_tokens=10, batch_size=2, stop_sequences=DEFAULT_STOP)
    assert gen(["a", "aa"]) == [["ab"], ["abab"]]
    jax.effects_barrier()
    assert len(steps) == 5  # row 0 ends with ":" (step 5), row 1 with EOS (step 5)
    steps.clear()
    plain = TextGenerator(Cfg(), {}, tok, max_new_tokens=10, batch_size=2)
    assert plain(["a", "aa"]) == [["ab\n\nQ:aa"], ["abab"]]
    jax.effects_barrier()
    assert len(steps) == 8  # row 0 runs to its EOS


def test_text_generator_stops_where_the_tokenizer_folds_newlines(monkeypatch):
    class Cfg:
        family = "decoder"
    tok = _PieceTokenizer(PIECES, fold=True)
    a, b, sq, colon = _ids(tok, "a", "b", " Q", ":")
    steps = _scripted(monkeypatch, [[a, b, sq, colon, a, a], [b, b]])
    gen = TextGenerator(Cfg(), {}, tok, max_new_tokens=10, batch_size=2, stop_sequences=DEFAULT_STOP)
    assert gen(["a", "aa"]) == [["ab"], ["bb"]]  # the text "ab Q:aa" holds no stop string; the ids do
    jax.effects_barrier()
    assert len(steps) == 4  # not 7: the row ended at " Q" ":"


def test_prompt_widths_pad_little_and_compile_few_shapes():
    from trainers.eval.decoding import prompt_width

    assert [prompt_width(n) for n in (1, 32, 33, 100, 129, 200, 256, 257, 600)] == \
        [32, 32, 64, 128, 160, 224, 256, 288, 640]
    assert prompt_width(200, cap=192) == 192 and prompt_width(100, cap=256) == 128
    for n in range(1, 4096):
        width = prompt_width(n)
        assert n <= width and (width - n < 32 or (width - n) * 8 < width)  # under an eighth is padding
    octave = {prompt_width(n) for n in range(257, 513)}
    assert len(octave) <= 8
