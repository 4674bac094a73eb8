"""Atomic file writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a half-written file
under its final name. The file gets the mode a plain ``open(path, "w")`` would give it (0666 minus the umask), not the
0600 of :func:`tempfile.mkstemp`, so colleagues on a shared server can read cohorts, checkpoints and figures.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    """The process umask, read without changing it where the kernel offers it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # elsewhere the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def umask_file_mode() -> int:
    """Mode of a new regular file under the current umask (``0o666 & ~umask``), e.g. 0o644 for umask 022."""
    return 0o666 & ~current_umask()


def umask_dir_mode() -> int:
    """Mode of a new folder under the current umask (``0o777 & ~umask``), e.g. 0o755 for umask 022."""
    return 0o777 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the full suffix (``.nii.gz`` stays ``.nii.gz``) so writers that dispatch on the
    extension (nibabel, torch) behave as for the final name. The final file's mode is the one the umask implies
    (:func:`umask_file_mode`). On any exception the temporary file is removed.

    Examples
    --------
    >>> with atomic_path("out.nii.gz") as tmp:   # doctest: +SKIP
    ...     nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_file_mode())   # mkstemp creates 0600; a plain open() would honour the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def clean_partials(folder: str | Path) -> int:
    """Remove leftovers of interrupted atomic writes (``.*.part.*``) in ``folder``; return how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.part*"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
