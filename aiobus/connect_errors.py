"""Sorting a failed connect attempt: permanent or transient, and the error the user sees.

Every protocol's connect failure passes through here once (after the adapter mapped its
driver's exceptions in its ``open()``), so the rules for what is retried live in one place.
"""

from __future__ import annotations

import asyncio

from .errors import (
    AiobusError,
    ConnectError,
    LinkDown,
    PermanentConnectError,
    TransientConnectError,
)


def as_connect_error(exc: BaseException) -> tuple[bool, BaseException]:
    """Sort an attempt's failure: (permanent?, the error to report).

    aiobus errors keep their type (a ``TopologyMismatch`` at first connect is raised as
    itself); unknown errors are not retried, so a bug shows at once instead of as a
    30-second connect timeout.
    """
    if isinstance(exc, ConnectError):
        return exc.permanent, exc
    if isinstance(exc, (LinkDown, OSError, TimeoutError, EOFError, asyncio.IncompleteReadError)):
        err: ConnectError = TransientConnectError(f"{type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return False, err
    if isinstance(exc, AiobusError):
        return True, exc
    err = PermanentConnectError(f"unexpected {type(exc).__name__} while connecting: {exc}")
    err.__cause__ = exc
    return True, err
