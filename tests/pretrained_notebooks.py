"""Write copies of the training notebooks with ``pretrained = True`` for nbval (``make test``).

nbval runs a notebook as committed and takes no parameters, so ``make test`` runs these copies after the notebooks
themselves: notebooks 02 and 03 then run with ``pretrained`` unset (train) and set (install ``pretrained/smoke/``).

Usage: ``python tests/pretrained_notebooks.py OUT_DIR``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("02_nodule_gans.ipynb", "03_ctsgan_training.ipynb")


def write_copies(out: Path) -> list[Path]:
    """Copies of :data:`NOTEBOOKS` in ``out`` whose parameters cell says ``pretrained = True``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in NOTEBOOKS:
        nb = json.loads((REPO / "notebooks" / name).read_text(encoding="utf-8"))
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        lines = "".join(cell["source"]).splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if line.startswith("pretrained = False")]
        if len(hits) != 1:
            raise SystemExit(f"{name}: the parameters cell has no line 'pretrained = False'")
        lines[hits[0]] = lines[hits[0]].replace("pretrained = False", "pretrained = True ", 1)
        cell["source"] = lines
        path = out / name.replace(".ipynb", "_pretrained.ipynb")
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_copies(Path(sys.argv[1])):
        print(p)
