"""Errors raised while loading a rule set. ``connector/`` turns them into ConfigError with the file."""

from __future__ import annotations


class RulesError(Exception):
    """A rule set is invalid: ``path`` is where inside the rules (``segments[3].when.count.within``)."""

    def __init__(self, path: str, reason: str, more: int = 0) -> None:
        self.path = path
        self.reason = reason + (f" (and {more} more)" if more else "")
        super().__init__(f"{path}: {self.reason}" if path else self.reason)

    def prefixed(self, prefix: str) -> RulesError:
        path = f"{prefix}.{self.path}" if self.path and not self.path.startswith("[") else prefix + self.path
        return RulesError(path, self.reason)
