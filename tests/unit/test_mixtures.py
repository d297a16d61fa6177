"""Task ladder, proportions, caps and the resumable mixture stream."""

import collections
import json

import pytest

from trainers.data.mixtures import MixtureStream, _permute, build_registry, caps, proportions, select_tasks
from trainers.data.suite import build_suite
from trainers.spec import DataConfig, UserError


def _stream(seed=0, **kw):
    cfg = DataConfig(**kw)
    return MixtureStream(build_registry(cfg), cfg, seed, length_fn=len)


def test_paper_ladder_is_nested_and_exact():
    reg = build_suite(200)
    sets = {n: select_tasks(reg, n) for n in (9, 89, 282, 1836)}
    subs = {n: collections.Counter(t.submixture for t in ts) for n, ts in sets.items()}
    assert subs[9] == {"cot": 9}
    assert subs[89] == {"cot": 9, "muffin": 80}
    assert subs[282] == {"cot": 9, "muffin": 80, "t0sf": 193}
    assert subs[1836] == {"cot": 9, "muffin": 80, "t0sf": 193, "niv2": 1554}
    names = {n: [t.name for t in ts] for n, ts in sets.items()}
    assert names[89][:9] == names[9] and names[282][:89] == names[89] and names[1836][:282] == names[282]


def test_other_counts_nested_and_without_cot():
    reg = build_suite(200)
    a, b = select_tasks(reg, 150), select_tasks(reg, 400)
    assert len(a) == 150 and [t.name for t in b[:150]] == [t.name for t in a]
    no_cot = select_tasks(reg, 282, with_cot=False)
    assert len(no_cot) == 273 and all(t.submixture != "cot" for t in no_cot)
    with pytest.raises(UserError, match="task_count"):
        select_tasks(reg, 0)
    with pytest.raises(UserError, match="only 1836"):
        select_tasks(reg, 5000)


def test_presets_and_custom_proportions():
    assert proportions(DataConfig(mixture="A")) == {"muffin": 52.0, "t0sf": 15.0, "niv2": 30.0, "cot": 3.0}
    assert proportions(DataConfig(mixture="B"))["t0sf"] == 27.9
    custom = proportions(DataConfig(mixture="custom", proportions=(("muffin", 1.0), ("cot", 1.0))))
    assert custom == {"cot": 1.0, "muffin": 1.0, "t0sf": 0.0, "niv2": 0.0}
    with pytest.raises(UserError, match="did you mean 'muffin'"):
        proportions(DataConfig(mixture="custom", proportions=(("mufin", 1.0),)))
    with pytest.raises(UserError, match="mixture"):
        proportions(DataConfig(mixture="C"))


def test_caps_scale_with_examples_per_task():
    assert caps(DataConfig(examples_per_task=200)) == {"cot": 4000, "muffin": 1200, "t0sf": 800, "niv2": 200}
    assert caps(DataConfig(source="flan"))["muffin"] == 30_000
    assert caps(DataConfig(examples_per_task=200, caps=(("niv2", 10_000),)))["niv2"] == 400


def test_rates_are_renormalised_and_capped():
    s = _stream(task_count=282, examples_per_task=100)
    assert s.rates.keys() == {"cot", "muffin", "t0sf"}
    assert abs(sum(s.rates.values()) - 1) < 1e-9 and abs(s.rates["muffin"] / s.rates["cot"] - 52 / 3) < 1e-9
    rates = s.task_rates()
    assert abs(sum(rates.values()) - 1) < 1e-9
    cap = caps(DataConfig(examples_per_task=100))
    by_task = {t.name: t for t in s.tasks}
    big = max((t for t in s.tasks if t.submixture == "muffin"), key=lambda t: t.size(s.formats))
    assert big.size(s.formats) > cap["muffin"]  # some tasks are larger than the cap ...
    capped = [n for n, t in by_task.items() if t.submixture == "muffin" and t.size(s.formats) >= cap["muffin"]]
    assert len({round(rates[n], 12) for n in capped}) == 1  # ... and all capped tasks get the same rate


def test_empirical_mix_follows_proportions():
    s = _stream(task_count=1836, mixture="B")
    counts = collections.Counter(s.next()[0].split("/")[0] for _ in range(4000))
    for sub, p in {"muffin": 0.46, "t0sf": 0.279, "niv2": 0.242}.items():
        assert abs(counts[sub] / 4000 - p) < 0.03


def test_formats_filter_and_with_cot():
    s = _stream(task_count=89, formats=("zs_noopt",))
    for _ in range(200):
        name, inputs, _ = s.next()
        assert not name.startswith("cot/") and "OPTIONS" not in inputs
    cot = _stream(task_count=9, formats=("cot_zs",))
    assert all("Let's think step by step." in cot.next()[1] for _ in range(50))
    with pytest.raises(UserError, match="formats"):
        _stream(task_count=9, formats=("zs_opt",))
    with pytest.raises(UserError, match="did you mean"):
        _stream(task_count=9, formats=("zs_optt",))
    no_cot = _stream(task_count=89, with_cot=False)
    assert "cot" not in no_cot.rates
    with pytest.raises(UserError, match="with_cot"):
        _stream(task_count=9, with_cot=False)


def test_stream_is_deterministic_and_resumable():
    a, b = _stream(seed=5, task_count=282), _stream(seed=5, task_count=282)
    assert [a.next() for _ in range(100)] == [b.next() for _ in range(100)]
    state = json.loads(json.dumps(a.state()))
    ahead = [a.next() for _ in range(300)]
    c = _stream(seed=5, task_count=282)
    c.restore(state)
    assert [c.next() for _ in range(300)] == ahead
    assert _stream(seed=6, task_count=282).next() != _stream(seed=5, task_count=282).next()


def test_small_task_cycles_through_all_examples():
    reg = build_suite(200)
    task = reg.get("cot/qasc")
    m = task.size(("cot_zs",))
    assert sorted(_permute(i, m, 1234) for i in range(m)) == list(range(m))
    assert [_permute(i, m, 1) for i in range(m)] != list(range(m))


def test_demo_cells_are_fast():
    import time

    for n in (9, 89, 282):
        start = time.perf_counter()
        s = _stream(task_count=n)
        for _ in range(2000):
            s.next()
        assert time.perf_counter() - start < 2.0
