# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Errors raised for bad input. Each one names the offending file (or key) and the problem."""

from __future__ import annotations

import os

__all__ = ["InputError", "DatalistError", "require_bool"]


class InputError(ValueError):
    """A file cannot be used as given: unreadable, wrong size, wrong values, missing pixels...

    The message always starts with the file path, so a user scanning a log of a folder run
    finds the culprit at once.

    Args:
        path: the file (or datalist key) at fault.
        problem: what is wrong, and where possible what was expected.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)

    def __reduce__(self):  # keep the two-argument constructor picklable across DataLoader workers
        return (type(self), (self.path, self.problem))


class DatalistError(InputError):
    """A datalist or split request cannot be satisfied (empty split, too many labels asked for...)."""


def require_bool(**flags: object) -> None:
    """Refuse switches that are not real booleans.

    ``python -m monai.bundle run --flag false`` passes the *string* ``"false"`` (only ``False`` becomes a bool), and a
    non-empty string is truthy: without this check such a run silently does the opposite of what was asked.

    Raises:
        TypeError: naming the first flag that is not a ``bool``.
    """
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"{name} must be True or False, got {value!r} ({type(value).__name__}); on the monai.bundle command "
                "line write True/False (a lowercase 'false' stays a string)."
            )
