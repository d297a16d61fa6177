"""Flan 2022 JSONL exports: fixtures, gzip, sub-mixture mapping, malformed input."""

import gzip
import json
from pathlib import Path

import pytest

from trainers.data.flan import load_registry, read_records
from trainers.data.mixtures import MixtureStream, build_registry
from trainers.data.pipeline import make_batches
from trainers.spec import DataConfig, UserError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "flan"
ALL = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "cot_zs", "cot_fs")


def _line(**kw):
    rec = {"inputs": "q", "targets": "a", "task_source": "NIv2", "task_name": "t", "template_type": "zs_noopt"}
    rec.update(kw)
    return json.dumps(rec) + "\n"


def test_fixtures_load_with_submixtures(tmp_path):
    reg = load_registry((str(FIXTURES),), tmp_path)
    assert reg.counts() == {"cot": 2, "muffin": 4, "t0sf": 2, "niv2": 3}
    assert reg.get("wiki_dialog").submixture == "muffin"  # Dialog -> Muffin
    assert reg.get("task002_even_or_odd").submixture == "niv2"  # from the gzipped file
    assert reg.get("cot_gsm8k").formats == ("cot_zs", "cot_fs")
    total = sum(1 for f in sorted(FIXTURES.iterdir()) for _ in read_records(f))
    assert sum(t.size(ALL) for t in reg) == total


def test_examples_round_trip_and_cache_reused(tmp_path):
    reg = load_registry((str(FIXTURES),), tmp_path)
    task = reg.get("task001_reverse_string")
    seen = {task.render(i, ALL, None, None) for i in range(task.size(ALL))}
    originals = {(r["inputs"], r["targets"]) for _, r in read_records(FIXTURES / "niv2.jsonl.gz") if r["task_name"] == task.name}
    assert seen == originals
    caches = list((tmp_path / "flan_cache").iterdir())
    load_registry((str(FIXTURES),), tmp_path)
    assert list((tmp_path / "flan_cache").iterdir()) == caches and len(caches) == 1


def test_format_filter_and_mixing(tmp_path):
    cfg = DataConfig(source="flan", paths=(str(FIXTURES),), task_count=11, formats=("zs_noopt",))
    s = MixtureStream(build_registry(cfg, tmp_path), cfg, 0, len)
    names = {t.name for t in s.tasks}
    assert "anli/r1:0.1.0" not in names and "cot_gsm8k" not in names  # no zs_noopt examples
    for _ in range(100):
        name, inputs, _ = s.next()
        assert "OPTIONS" not in inputs and name in names


def test_flan_batches(tmp_path):
    cfg = DataConfig(source="flan", paths=(str(FIXTURES),), task_count=11, input_length=128, target_length=32)
    it = make_batches(cfg, "t5", 2, 0, tmp_path)
    batch = next(it)
    assert batch["encoder_input_tokens"].shape == (2, 128)
    text = it.tokenizer.decode(batch["decoder_target_tokens"][0])
    assert text


@pytest.mark.parametrize(
    "bad, match",
    [
        ("{not json\n", "not valid JSON"),
        ('["a list"]\n', "JSON object"),
        (_line(targets=None), "'targets'"),
        (_line(task_source="Wiki"), "task_source 'Wiki'"),
        (_line(template_type="zs_optt"), "did you mean 'zs_opt'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, match):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(_line() + "\n" + bad)
    with pytest.raises(UserError, match=match) as e:
        load_registry((str(path),), tmp_path / "home")
    assert f"{path}:3" in str(e.value)
    assert list((tmp_path / "home" / "flan_cache").iterdir()) == []  # nothing half-built left behind


def test_missing_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_registry((str(tmp_path / "nope"),), tmp_path)
    with pytest.raises(UserError, match="data.paths"):
        load_registry((), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .jsonl"):
        load_registry((str(tmp_path / "empty"),), tmp_path)
