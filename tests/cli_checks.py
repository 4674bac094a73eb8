"""Assertions shared by the command-line tests (`test_hardening.py`, `test_safety.py`)."""
from __future__ import annotations


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    """Exit 2 and one line ``error: ...`` holding every needle, no traceback."""
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
