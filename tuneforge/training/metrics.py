"""Per-step metrics: `metrics.jsonl`, OpenAI's results CSV and (if installed) TensorBoard;
run events (blocks unfrozen, early stop) in `events.jsonl`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from tuneforge.fsutil import atomic_write, write_jsonl

RESULTS_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


class MetricsWriter:
    """Appends one record per optimizer step; on resume, drops records past the checkpoint.

    Files live in `folder`: `metrics.jsonl` (every metric) and `results.csv` (OpenAI's
    columns: step, train_loss, train_accuracy, valid_loss, valid_mean_token_accuracy).
    """

    def __init__(
        self, folder: str | Path, resume_step: int | None = None, tensorboard: bool = True
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.folder / "metrics.jsonl"
        self.csv = self.folder / "results.csv"
        self.events = self.folder / "events.jsonl"
        # Rewritten atomically: a run killed here still has its whole history on disk.
        write_jsonl(self.events, self._kept_records(resume_step, self.events))
        kept = self._kept_records(resume_step)
        # The newest record (kept, then logged): the run's final train_* metrics come from it.
        self.last: dict[str, Any] = kept[-1] if kept else {}
        write_jsonl(self.jsonl, kept)
        with atomic_write(self.csv) as f:
            w = csv.writer(f)
            w.writerow(RESULTS_COLUMNS)
            for rec in kept:
                w.writerow(self._csv_row(rec))
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.folder / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def _kept_records(self, resume_step: int | None, path: Path | None = None) -> list[dict]:
        path = path or self.jsonl
        if resume_step is None or not path.is_file():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [r for r in records if r.get("step", 0) <= resume_step]

    @staticmethod
    def _csv_row(rec: dict[str, Any]) -> list[Any]:
        return [
            rec.get("step"),
            rec.get("train_loss"),
            rec.get("train_mean_token_accuracy"),
            rec.get("valid_loss", ""),
            rec.get("valid_mean_token_accuracy", ""),
        ]

    def log(self, record: dict[str, Any]) -> None:
        """Append one step's record (flushed immediately, so a killed run keeps its history)."""
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.last = record
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow(self._csv_row(record))
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, record["step"])

    def event(self, step: int, kind: str, message: str, **data: Any) -> None:
        """Append one event (unfreezing, early stopping, ...) to `events.jsonl`."""
        with open(self.events, "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, "message": message, **data}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(folder: str | Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl` (or `events.jsonl` with `name`)."""
    path = Path(folder) / name
    return [json.loads(line) for line in path.read_text().splitlines() if line]
