"""What a stage may touch: paths from manifests stay inside their folder, output folders belong to one stage.

The rule (README, "Failure modes we test"):

- every path read from a manifest or a config resolves inside its cohort, run or root folder after symlinks are
  resolved (:func:`check_relative`, :func:`resolve_inside`);
- a stage deletes only files it can prove it wrote: listed in its own previous manifest, inside its own folder,
  named the way it names them, never through a symlink (:func:`owned_file`);
- an output folder that holds files the stage did not write is refused unless the user passes ``--allow-foreign``
  (:func:`claim_output_folder`); the folder then records its writer in ``.ctsgan-writer``.

It also writes paths for text that people share (figure footers, tables, run manifests): :func:`shareable_path`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..config import checkout_root, project_root
from ..errors import CTSGANError
from .atomic import atomic_write_bytes

#: Marker naming the stage that owns an output folder.
WRITER_FILE = ".ctsgan-writer"
#: Names a stage's bookkeeping adds to any folder it writes (lock, lock holder, writer marker, atomic-write parts).
_BOOKKEEPING = re.compile(r"^(\.ctsgan-writer|\.ctsgan\.lock(\.json)?|\..*\.part.*)$")


def check_relative(rel: str, where: str) -> str:
    """``rel`` as written in a manifest must be a relative POSIX path without ``..``; return it unchanged.

    Raises
    ------
    CTSGANError
        ``<where>: path <rel> ...`` for an absolute path, a drive, a backslash or a ``..`` component.
    """
    text = str(rel)
    pure = PurePosixPath(text)
    if (not text or pure.is_absolute() or "\\" in text or ":" in text.split("/")[0] or ".." in pure.parts
            or "\x00" in text):
        raise CTSGANError(f"{where}: path {text[:80]!r} must be relative to the cohort folder and stay inside it")
    return text


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or below it."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def resolve_inside(root: str | Path, rel: str, where: str) -> Path:
    """``root / rel`` with symlinks resolved, refused when it leaves ``root``.

    Parameters
    ----------
    root : folder the path is relative to (a cohort, run or project root)
    rel : the path as read from a manifest or config
    where : names the file and row for the error, e.g. ``"<manifest.csv>: row 'p1'"``
    """
    check_relative(rel, where)
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise CTSGANError(f"{where}: path {rel!r} resolves to {full}, outside {base} (a symbolic link?)")
    return full


def owned_file(root: str | Path, rel: str, pattern: re.Pattern) -> Path | None:
    """The file ``root / rel`` when this stage may delete it, else None.

    It must be a relative path without ``..``, name a regular file (not a symlink) whose every parent up to ``root``
    is a real folder, and its path relative to ``root`` must match ``pattern`` (the stage's naming).
    """
    try:
        check_relative(rel, "")
    except CTSGANError:
        return None
    if not pattern.fullmatch(str(PurePosixPath(rel))):
        return None
    root = Path(root)
    p = root / rel
    cur = p
    while cur != root:
        if cur.is_symlink():
            return None
        cur = cur.parent
    if not p.is_file() or not p.resolve().is_relative_to(root.resolve()):
        return None
    return p


def _infer_writer(folder: Path) -> str | None:
    """The writer of a folder written before ``.ctsgan-writer`` existed, from what it holds."""
    settings = folder / "cohort.json"
    if settings.is_file():
        try:
            s = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(s, dict) and "checkpoint_sha256" in s:
            return "generate"
        if isinstance(s, dict) and "source" in s:
            return "prepare"
        return None
    if any((folder / "shards").glob("shard-*/cohort.json")):
        return "generate"  # a sharded `generate` run keeps its cohort.json files in the shard folders
    names = [p.name for p in folder.iterdir() if not _BOOKKEEPING.match(p.name)]
    if "manifest.csv" in names and all(n == "manifest.csv" or re.fullmatch(r"phantom-[a-z]+-\d{6}(_label)?\.nii\.gz", n)
                                       for n in names):
        return "phantoms"
    return None


def claim_output_folder(folder: str | Path, writer: str, allow_foreign: bool = False) -> Path:
    """Check that ``folder`` may be written by stage ``writer``, create it, and record the writer.

    A new or empty folder, or one this stage wrote before, is fine. A folder written by another stage, or holding
    anything else, is refused; ``allow_foreign`` (``--allow-foreign``) lets the stage write beside unrelated files
    (it deletes only files it wrote), never over another stage's folder.

    Raises
    ------
    CTSGANError
        One line naming the folder, what is in it, and the flag.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CTSGANError(f"{folder}: exists and is not a folder")
    marker = folder / WRITER_FILE
    owner = None
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text(encoding="utf-8")).get("writer")
        except (OSError, ValueError, AttributeError):
            owner = None
    elif folder.is_dir():
        entries = sorted(p.name for p in folder.iterdir() if not _BOOKKEEPING.match(p.name))
        if entries:
            owner = _infer_writer(folder)
            if owner is None and not allow_foreign:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise CTSGANError(f"{folder}: holds files not written by `ctsgan {writer}` ({shown}); choose a new or "
                                  "empty folder, or pass --allow-foreign to write beside them (they are never "
                                  "deleted)")
    if owner is not None and owner != writer:  # never mix two stages' manifests, whatever the flags
        raise CTSGANError(f"{folder}: written by `ctsgan {owner}`, not `ctsgan {writer}`; refusing to replace it "
                          "(choose another folder)")
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_bytes(marker, (json.dumps({"writer": writer}) + "\n").encode())
    except OSError:
        if owner != writer:  # a read-only folder this stage already finished needs no new marker
            raise
    return folder


@contextlib.contextmanager
def undo_new_folder(folder: str | Path) -> Iterator[None]:
    """When the block fails and ``folder`` did not exist before it, remove what the block left that is only
    bookkeeping (writer marker, lock files, empty sub-folders), so a refused run leaves no output folder behind.
    Anything else in it (a volume, a manifest) stays."""
    folder = Path(folder)
    existed = folder.exists() or folder.is_symlink()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not folder.is_symlink():
            for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
                for name in filenames:
                    p = Path(dirpath) / name
                    if _BOOKKEEPING.match(name) and not p.is_symlink():
                        with contextlib.suppress(OSError):
                            p.unlink()
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()  # only succeeds when empty
        raise


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
