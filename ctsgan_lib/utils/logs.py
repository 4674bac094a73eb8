"""Append-only logs: ``log.csv`` for loss curves, JSON lines for metrics (each line carries its settings)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable


class CSVLog:
    """A CSV file with a fixed header, appended row by row and flushed (so a killed run keeps its rows).

    On resume, rows with ``step`` greater than the resumed step are dropped first, so the log matches the checkpoint.
    """

    def __init__(self, path: str | Path, fields: Iterable[str], resume_step: int | None = None):
        self.path = Path(path)
        self.fields = list(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists() and resume_step is None:
            self.path.unlink()
        new = not self.path.exists()
        self._fh = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore")
        if new:
            self._w.writeheader()
            self._fh.flush()

    def _truncate_after(self, step: int) -> None:
        with open(self.path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step") and int(float(r["step"])) <= step]
        tmp = self.path.with_suffix(".csv.part")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, **row: Any) -> None:
        self._w.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "CSVLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (and flush it to disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a torn last line (killed writer) is ignored."""
    path = Path(path)
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
