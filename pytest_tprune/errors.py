"""Errors that reach users: each says what was wrong and what to do about it.

Two families exist because callers must treat them differently: a
:class:`UsageError` is the user's input (exit status 2 on the command line, a
usage error in pytest), a :class:`PruneStepError` is the library stack failing
on valid input (exit status 1, a failed test) and names the step and the module.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""The exit codes of every ``tprune`` command: done; a failure (a prune, a regression); bad input."""


class TpruneError(Exception):
    """Base class of every error raised on purpose by pytest-tprune."""


class UsageError(TpruneError):
    """The input was wrong: a model name, a ratio, a device, an option value."""


class PruneStepError(TpruneError):
    """A step of the pruning recipe failed on a valid input.

    ``step`` is one of ``build``, ``trace``, ``prune``, ``adapt``, ``forward``,
    ``count``; ``module`` is the dotted name of the module involved when known.
    """

    def __init__(
        self, step: str, model: str, exc: BaseException, module: str | None = None, note: str | None = None
    ) -> None:
        self.step = step
        self.model = model
        self.module = module
        self.exc = exc
        where = f" in module '{module}'" if module else ""
        detail = f"{type(exc).__name__}: {exc}".strip()
        first_line = detail.splitlines()[0] if detail else type(exc).__name__
        self.note = note
        tail = f" ({note})" if note else ""
        super().__init__(f"{step} failed for {model}{where}: {first_line}{tail}")


class CaseTimeout(BaseException):
    """A case ran past its time limit (a hang inside the library stack).

    A BaseException on purpose: it is raised from a signal handler anywhere in
    library code, and must not be swallowed by an ``except Exception`` there.
    pytest still reports it as a failure of the test.
    """


class CheckFailed(AssertionError):
    """A check failed; ``check`` names which one (for the report).

    Each check's failures are of their own subclass (:meth:`of`), so that a
    known failure can expect exactly its check (``xfail(raises=CheckFailed.of("equivalence"))``):
    when that check starts to pass and another one fails instead, the case
    fails with the new message instead of reading as the old known failure.
    """

    _by_check: ClassVar[dict[str, type[CheckFailed]]] = {}

    def __new__(cls, check: str, message: str) -> CheckFailed:
        return super().__new__(CheckFailed.of(check) if cls is CheckFailed else cls, check, message)

    def __init__(self, check: str, message: str) -> None:
        self.check = check
        super().__init__(f"[{check}] {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles as CheckFailed(check, message): the subclass is remade
        return (CheckFailed, (self.check, str(self)[len(self.check) + 3 :]))

    @staticmethod
    def named_in(text: str) -> str | None:
        """The check a text starting with a failure's tag names (``"[shapes] ..."`` gives ``shapes``), or None:
        the one reader of the tag :meth:`__init__` writes, for known-failure causes and report reasons."""
        match = re.match(r"\[([a-z_]+)\] ", text)
        return match.group(1) if match else None

    @staticmethod
    def of(check: str) -> type[CheckFailed]:
        """The class of ``check``'s failures (made once per check name), a subclass of :class:`CheckFailed`."""
        found = CheckFailed._by_check.get(check)
        if found is None:
            name = "".join(part.title() for part in check.replace("-", "_").split("_")) + "CheckFailed"
            found = type(name, (CheckFailed,), {"__module__": __name__, "__doc__": f"The {check} check failed."})
            CheckFailed._by_check[check] = found
        return found
