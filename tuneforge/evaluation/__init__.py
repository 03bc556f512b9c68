"""Evaluation: likelihood, generation and behaviour metrics, baseline comparison, reports.

Example:
    >>> from tuneforge.evaluation import EvalSettings, run_eval
    >>> result = run_eval("runs/bank-lora", "data/valid.jsonl", general="data/wiki.txt",
    ...                   settings=EvalSettings(blocklist="examples/blocklist.txt"))
    >>> {r["name"]: r.get("delta") for r in result["metrics"]}["loss"]
    -0.83

`evaluate_model` scores one model, `compare` builds the table from one or two runs,
`write_report` / `regenerate_report` write report.md, report.html and metrics.json.
"""

from tuneforge.evaluation.generate import GenerationSettings, Reply, generate_replies
from tuneforge.evaluation.loading import EvalError, LoadedModel, load_for_eval
from tuneforge.evaluation.metrics import Metric, load_metric
from tuneforge.evaluation.report import print_table, regenerate_report, write_report
from tuneforge.evaluation.run import EvalSettings, compare, evaluate_model, run_eval

__all__ = [
    "EvalError",
    "EvalSettings",
    "GenerationSettings",
    "LoadedModel",
    "Metric",
    "Reply",
    "compare",
    "evaluate_model",
    "generate_replies",
    "load_for_eval",
    "load_metric",
    "print_table",
    "regenerate_report",
    "run_eval",
    "write_report",
]
