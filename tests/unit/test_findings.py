"""The first page's choices: the paper's headline metric among its tables, and what the seeds vary."""

from dashboards import findings
from dashboards.runs import CellRun
from dashboards.trends import Trend


def _cell(seed, task_count, base="/b/tiny-1", dropout=0.0):
    plan = {"spec": {"init_checkpoint": base, "model": {"dropout_rate": dropout}}}
    return CellRun(f"k{seed}{task_count}", "r", "tiny-1", 591232, task_count, ("zs_opt",), True, "A", "finished",
                   seed=seed, plan=plan)


def test_seeds_that_share_a_base_model_are_said_to_vary_the_data_order_only():
    cells = [_cell(0, 0), _cell(0, 9), _cell(1, 9)]
    note = findings.seed_note(cells)
    assert note.startswith("seeds vary the finetuning data order only") and "lower bound" in note
    assert "and dropout" in findings.seed_note([_cell(0, 9, dropout=0.1), _cell(1, 9, dropout=0.1)])
    assert findings.seed_note([_cell(0, 9)]) == ""  # one seed: nothing to say
    assert findings.seed_note([_cell(0, 9, base=""), _cell(1, 9, base="")]) == ""  # random init per seed


def _trends(metric, direction="none"):
    t = Trend(metric, "params", direction, None, None, None, None, 0, None, 4, 2, 1.0, 0.5, None, "why")
    return findings.MetricTrends(metric, metric, (t,))


def test_the_normalized_average_is_a_headline_metric_beside_the_loss():
    metrics = [_trends("eval/loss"), _trends("eval/unseen/normalized_average"), _trends("eval/unseen_mc/rc")]
    assert findings.headline_metrics(metrics, "eval/loss") == ["eval/loss", "eval/unseen/normalized_average"]
    assert findings.headline_metrics([_trends("eval/loss"), _trends("eval/unseen_mc/rc")], "eval/loss") == [
        "eval/loss", "eval/unseen_mc/rc"]
