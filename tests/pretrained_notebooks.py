"""Write copies of the training notebooks with ``pretrained = True`` for nbval (``make test``).

nbval runs a notebook as committed and takes no parameters, so ``make test`` runs these copies after the notebooks
themselves: notebooks 02 and 03 then run with ``pretrained`` unset (train) and set (install ``pretrained/smoke/``).
The copy of 02 also sets ``with_sphere = False``: its realism check is the slowest cell of the copies and the run
with ``pretrained`` unset already checks the sphere control (installing the shipped sphere injector is checked by
``tests/test_pretrained.py``).

Usage: ``python tests/pretrained_notebooks.py OUT_DIR``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: notebook → {parameter line prefix: replacement}
NOTEBOOKS = {
    "02_nodule_gans.ipynb": {"pretrained = False": "pretrained = True ", "with_sphere = True": "with_sphere = False"},
    "03_ctsgan_training.ipynb": {"pretrained = False": "pretrained = True "},
}


def write_copies(out: Path) -> list[Path]:
    """Copies of :data:`NOTEBOOKS` in ``out`` with the parameter changes listed there."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, changes in NOTEBOOKS.items():
        nb = json.loads((REPO / "notebooks" / name).read_text(encoding="utf-8"))
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        lines = "".join(cell["source"]).splitlines(keepends=True)
        for old, new in changes.items():
            hits = [i for i, line in enumerate(lines) if line.startswith(old)]
            if len(hits) != 1:
                raise SystemExit(f"{name}: the parameters cell has no line {old!r}")
            lines[hits[0]] = lines[hits[0]].replace(old, new, 1)
        cell["source"] = lines
        path = out / name.replace(".ipynb", "_pretrained.ipynb")
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_copies(Path(sys.argv[1])):
        print(p)
