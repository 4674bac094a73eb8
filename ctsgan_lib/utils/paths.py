"""Paths as they appear in shared outputs (figure footers, tables, manifests): relative, never machine paths."""
from __future__ import annotations

from pathlib import Path


def shareable_path(path: str | Path) -> str:
    """``path`` relative to the project root (``CTSGAN_ROOT``) or the checkout, for text that people share.

    A figure footer or run manifest that reads ``/home/alice/ctsgan/data/demo/debiased`` tells a colleague nothing
    and leaks a machine layout; ``data/demo/debiased`` is what they can find in their own clone.

    Parameters
    ----------
    path : str or Path
        Any path; relative paths are returned unchanged (as POSIX text).

    Returns
    -------
    str
        Relative POSIX path when ``path`` lies under the project root or the checkout; otherwise ``.../<name>`` (the
        last component only), so no absolute path of this machine is written.
    """
    from ..config import checkout_root, project_root

    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    p = p.resolve()
    for base in (project_root(), checkout_root()):
        try:
            return p.relative_to(base.resolve()).as_posix() or "."
        except ValueError:
            continue
    return f".../{p.name}"
