"""End to end: a tiny fine-tune against its base on a toy task, the report, the CLI."""

from __future__ import annotations

import json
import re

import pytest
from toy import write_toy
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.evaluation import EvalSettings, GenerationSettings, regenerate_report, run_eval

runner = CliRunner()

METRIC_FILE = """
def mentions_paris(prediction, reference):
    '''Reply mentions Paris (when the reference does).'''
    if "Paris" not in reference:
        return None
    return "Paris" in prediction
"""


@pytest.fixture(scope="module")
def toy_eval(toy_finetune, tmp_path_factory):
    model, holdout = toy_finetune
    root = tmp_path_factory.mktemp("eval")
    (root / "metric.py").write_text(METRIC_FILE)
    (root / "blocklist.txt").write_text("# replies we never want\ncapital of France\n")
    (root / "general.txt").write_text(
        "The quick brown fox jumps over the lazy dog.\n\nHello! How can I help you today?\n"
    )
    settings = EvalSettings(
        max_new_tokens=24,
        generation=GenerationSettings(batch_size=8),
        blocklist=root / "blocklist.txt",
        metrics=[f"{root / 'metric.py'}:mentions_paris"],
        n_boot=300,
        dtype="fp32",  # as trained (toy.py): the eval loss must equal training's valid_loss
    )
    result = run_eval(
        model, holdout, general=root / "general.txt", out_dir=root / "out", settings=settings
    )
    return result, root / "out"


def test_finetune_beats_its_base_on_the_toy_task(toy_eval, toy_finetune, tiny_model_dir):
    result, _ = toy_eval
    assert result["baseline"]["name"] == str(tiny_model_dir)  # found in tuneforge.json
    rows = {r["name"]: r for r in result["metrics"]}
    for name in ("loss", "perplexity"):
        assert rows[name]["delta"] < 0 and rows[name]["ci"][1] < 0 and rows[name]["better"]
    assert rows["token_accuracy"]["delta"] > 0 and rows["token_accuracy"]["better"]
    assert rows["chrf"]["delta"] > 0 and rows["token_f1"]["delta"] > 0
    # The random base never stops; the fine-tune learned to end its turn.
    assert rows["never_ending_rate"]["baseline"] == 1.0
    assert rows["never_ending_rate"]["delta"] < 0
    assert {"json_valid", "json_field_accuracy", "blocklist_rate", "general_perplexity"} <= set(
        rows
    )
    assert rows["general_perplexity"]["group"] == "forgetting"
    # The loss matches what training measured on the same file with the same masking.
    manifest = json.loads((toy_finetune[0] / "tuneforge.json").read_text())
    assert rows["loss"]["model"] == pytest.approx(manifest["metrics"]["valid_loss"], rel=1e-4)
    assert result["examples"]["improved"]
    improved = result["examples"]["improved"][0]
    assert {"reply", "baseline_reply", "reference", "prompt"} <= set(improved)
    assert result["settings"]["generation"]["do_sample"] is False


def test_custom_metric_shows_up_like_the_builtins(toy_eval):
    result, out = toy_eval
    row = next(r for r in result["metrics"] if r["name"] == "mentions_paris")
    assert row["group"] == "custom" and "baseline" in row and "ci" in row
    assert row["n"] == 2  # only the two Paris examples of the 10
    assert "mentions_paris" in (out / "report.md").read_text()


def test_html_report_is_self_contained(toy_eval):
    _, out = toy_eval
    page = (out / "report.html").read_text()
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) == 3
    assert not re.search(r"(href|src)\s*=\s*['\"]?(https?:|//)", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "http://" not in page and "https://" not in page
    for name in ("loss", "learning_rate", "grad_norm"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runs"]["model"]["examples"][0]["reply"] is not None


def test_report_command_regenerates(toy_eval):
    _, out = toy_eval
    (out / "report.html").unlink()
    before = (out / "report.md").read_text()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "report.md").read_text() == before
    assert "loss" in result.output  # the Rich table


def test_report_of_a_model_folder_without_eval_shows_its_curves(toy_finetune):
    model, _ = toy_finetune
    paths = regenerate_report(model)
    assert paths["html"] == model / "eval" / "report.html"
    assert "data:image/png;base64," in paths["html"].read_text()


def test_cli_eval_writes_the_report(toy_finetune, tmp_path):
    model, holdout = toy_finetune
    out = tmp_path / "cli"
    args = ["eval", "--model", str(model), "--data", str(holdout), "--no-baseline"]
    result = runner.invoke(app, [*args, "--limit", "3", "--max-new-tokens", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert {"report.md", "report.html", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] is None and metrics["model"]["examples"] == 3


def _fails_cleanly(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_bad_input_gets_a_clear_error(tiny_model_dir, tmp_path):
    model = ["eval", "--model", str(tiny_model_dir), "--no-baseline", "-o", str(tmp_path / "o")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails_cleanly([*model, "--data", str(empty)], "empty.jsonl")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
        '{"prompt": "2+2=", "completion": " 4"}\n'
    )
    _fails_cleanly([*model, "--data", str(mixed)], "mixes formats")
    holdout = write_toy(tmp_path / "holdout.jsonl", 2)
    _fails_cleanly([*model, "--data", str(holdout), "--metric", "nope"], "MODULE:FUNCTION")
    _fails_cleanly(
        ["eval", "--model", str(tmp_path / "missing"), "--data", str(holdout)],
        "no such model folder",
    )
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    _fails_cleanly(["eval", "--model", str(no_tok), "--data", str(holdout)], "has no tokenizer")
    _fails_cleanly(["report", str(tmp_path)], "no evaluation here")


def test_holdout_in_another_format_than_training_is_refused(toy_finetune, tmp_path):
    model, _ = toy_finetune
    pc = tmp_path / "pc.jsonl"
    pc.write_text('{"prompt": "2+2=", "completion": " 4"}\n')
    _fails_cleanly(
        ["eval", "--model", str(model), "--data", str(pc), "-o", str(tmp_path / "o")],
        "trained on chat examples",
    )
