"""Errors the user sees as one line (the CLI prints ``error: <message>`` and exits 2, no traceback)."""
from __future__ import annotations


class CTSGANError(Exception):
    """Base class for errors caused by user input (files, configs, checkpoints)."""


class InputFileError(CTSGANError):
    """A user file is unreadable or not what it should be. The message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class MissingInputError(CTSGANError):
    """A stage's inputs are missing; the message names the notebook or command that makes them."""


class CheckpointError(CTSGANError):
    """A checkpoint cannot be used (unsafe pickle, other architecture, corrupted)."""
