"""The one error type for bad site data: it always names the file (or site) and the problem."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with a site's data. ``str(err)`` is ``"<where>: <problem>"``."""

    def __init__(self, where, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
