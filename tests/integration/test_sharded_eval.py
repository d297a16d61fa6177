"""Evaluation on 8 simulated CPU devices equals evaluation on one: greedy and sampled
decoding, rank-classification log-probabilities and the held-out loss, both families, on
meshes with data, fsdp and tensor parallelism, parameters and KV cache sharded.

The device count of a JAX process is fixed at start-up, so the meshes are tried in a
subprocess started with --xla_force_host_platform_device_count=8.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

_CHILD = r"""
import json, tempfile
from pathlib import Path
import jax
from trainers import models, partitioning
from trainers.data.tokenizer import load_tokenizer
from trainers.eval.decoding import DEFAULT_STOP, TextGenerator
from trainers.eval.heldout_loss import HeldoutLoss
from trainers.eval.placement import EvalMesh
from trainers.eval.rank import OptionScorer
from trainers.spec import DataConfig, MeshConfig, ModelConfig

assert jax.device_count() == 8, jax.devices()
LI, LT = 64, 16
CONFIGS = {
    "t5": ModelConfig(name="t5", vocab_size=384, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                      num_encoder_layers=1, num_decoder_layers=1),
    # Grouped K/V heads: whole on every device, like their kernels.
    "decoder": ModelConfig(name="dec", family="decoder", vocab_size=384, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                           num_kv_heads=2, num_encoder_layers=0, num_decoder_layers=2, tie_embeddings=False),
}
PROMPTS = ["Q: 2 + 3 =", "Translate to French: cat", "The sky is", "Which is larger, 7 or 9? Answer:", "Hi"]
OPTIONS = [["5", "6"], ["chat", "chien", "oiseau"], ["blue", "green"], ["7", "9"], ["there", "you", "x"]]
tok = load_tokenizer(DataConfig(tokenizer="byte"), Path(tempfile.mkdtemp()))
report = {}
for family, cfg in CONFIGS.items():
    host = models.init_params(cfg, jax.random.PRNGKey(0), LI, LT)
    for d, f, t in [(1, 1, 1), (2, 2, 2), (2, 1, 4)]:
        placement = EvalMesh(partitioning.make_mesh(MeshConfig(devices=d * f * t, data=d, fsdp=f, tensor=t)))
        params = jax.device_put(host, partitioning.param_shardings(cfg, placement.mesh))
        # batch_size 3 becomes 4 rows on these meshes: batches differ from one device's.
        gen = TextGenerator(cfg, params, tok, max_new_tokens=8, batch_size=3, max_prompt_tokens=LI,
                            stop_sequences=DEFAULT_STOP, placement=placement)
        state = jax.eval_shape(lambda p, x: models.prefill(cfg, p, x, 8), params,
                               jax.ShapeDtypeStruct((placement.rows(3), LI), "int32"))
        scorer = OptionScorer(cfg, params, tok, batch_size=2, max_prompt_tokens=LI, placement=placement)
        report[f"{family} {(d, f, t)}"] = {
            "greedy": [r.tolist() for r in gen.ids(PROMPTS)],
            "sampled": [r.tolist() for r in gen.ids(PROMPTS, num_samples=3, temperature=1.0, top_k=50, seed=1)],
            "rc": [[s.logprob for s in q] for q in scorer(PROMPTS, OPTIONS)],
            "loss": HeldoutLoss(cfg, tok, LI, LT, per_group=2, placement=placement)(params),
            "sharded_params": sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(params)),
            "cache_specs": sorted({str(s.spec) for x, s in zip(jax.tree.leaves(state),
                                   jax.tree.leaves(placement.state_shardings(cfg, state))) if x.ndim >= 4}),
        }
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("REPORT ", 1)[1])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_sharded_evaluation_equals_one_device(report, family):
    ref = report[f"{family} (1, 1, 1)"]
    assert ref["sharded_params"] == 0
    assert any(t != 0 for row in ref["greedy"] for t in row[0])  # something was generated
    for mesh in ("(2, 2, 2)", "(2, 1, 4)"):
        got = report[f"{family} {mesh}"]
        assert got["sharded_params"] > 0, mesh
        assert got["greedy"] == ref["greedy"], mesh
        assert got["sampled"] == ref["sampled"], mesh
        np.testing.assert_allclose(np.concatenate(got["rc"]), np.concatenate(ref["rc"]), rtol=1e-5, atol=1e-5)
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), mesh
    # Samples differ from each other, so the comparison above is about sampling too.
    assert any(len({tuple(s) for s in prompt}) > 1 for prompt in ref["sampled"])


@pytest.mark.slow
def test_kv_cache_is_split_over_rows_and_heads(report):
    rows = "('data', 'fsdp')"
    # Keys/values [layers, batch, length, heads, kv]: rows over data x fsdp everywhere; the
    # heads over tensor where there are as many K/V heads as query heads (T5 here).
    for mesh in ("(2, 2, 2)", "(2, 1, 4)"):
        assert report[f"t5 {mesh}"]["cache_specs"] == [f"P(None, {rows}, None, 'tensor', None)"]
        assert report[f"decoder {mesh}"]["cache_specs"] == [f"P(None, {rows}, None, None, None)"]


_CLI_CHILD = r"""
import json, sys
from pathlib import Path
import jax
from orchestrator import cli
from trainers import models
from trainers.spec import ModelConfig

from trainers.eval import placement

assert jax.device_count() == 8, jax.devices()
work = Path(sys.argv[1])
put = placement.EvalMesh.put_params
sharded = []  # per placement of the parameters: (mesh shape, leaves not replicated)


def recorded(self, model_cfg, params):
    out = put(self, model_cfg, params)
    sharded.append((dict(self.mesh.shape), sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(out))))
    return out


placement.EvalMesh.put_params = recorded
cfg = ModelConfig(name="mesh-t5", vocab_size=384, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                  num_encoder_layers=1, num_decoder_layers=1)
ckpt = models.save_pretrained(work / "ckpt", cfg, models.init_params(cfg, jax.random.PRNGKey(5)))
(ckpt / "pretrain.json").write_text(json.dumps({"model": "mesh-t5", "tokenizer": "byte", "flops": 1.0}))
base = ["eval", "--checkpoint", str(ckpt), "--benchmark", "mgsm,unseen_mc", "--max-examples", "2",
        "--max-new-tokens", "4", "--max-prompt-tokens", "256", "--batch-size", "3", "--format", "json"]
codes = {}
for name, extra in {"one": [], "mesh": ["--mesh", "2,1,2"], "too_big": ["--mesh", "4,4,4"], "bad": ["--mesh", "2,2"]}.items():
    preds = str(work / name / "{benchmark}.jsonl")
    codes[name] = cli.main(base + extra + ["--predictions-out", preds])
    print("END " + name, flush=True)
print("CODES " + json.dumps(codes))
print("SHARDED " + json.dumps(sharded))
"""


@pytest.mark.slow
def test_flanscale_eval_on_a_mesh_answers_as_on_one_device(tmp_path):
    """`flanscale eval --mesh 2,1,2` on 4 of 8 simulated devices: the same scores and the same
    predictions as on one device; a mesh the host cannot form is one line, before loading."""
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "FLANSCALE_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", _CLI_CHILD, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    codes, sharded = proc.stdout.split("CODES ", 1)[1].split("SHARDED ")
    assert json.loads(codes) == {"one": 0, "mesh": 0, "too_big": 2, "bad": 2}
    # every placement of the parameters: whole on one device, then split over data 2 x tensor 2
    placed = [(tuple(shape.values()), split > 0) for shape, split in json.loads(sharded)]
    assert placed[0] == ((1, 1, 1), False) and placed[-1] == ((2, 1, 2), True)
    assert set(placed) == {((1, 1, 1), False), ((2, 1, 2), True)}
    runs = proc.stdout.split("CODES ", 1)[0].split("END ")
    one, mesh = json.loads(runs[0]), json.loads(runs[1].split("\n", 1)[1])
    assert one["scores"] == mesh["scores"] and one["metrics"] == pytest.approx(mesh["metrics"], rel=1e-5)
    for bench in ("mgsm", "unseen_mc"):
        assert (tmp_path / "one" / f"{bench}.jsonl").read_text() == (tmp_path / "mesh" / f"{bench}.jsonl").read_text()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("flanscale: error:")]
    assert errors == [
        "flanscale: error: --mesh 4,4,4: needs 64 devices (data 4 x fsdp 4 x tensor 4) but only 8 are available",
        "flanscale: error: --mesh: '2,2' is not a mesh; give three sizes >= 1 as DATA,FSDP,TENSOR, e.g. 4,1,2"]
    assert not (tmp_path / "too_big").exists() and not (tmp_path / "bad").exists()
