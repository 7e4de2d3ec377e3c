"""The connection's life as an explicit state machine, and the one deadline a close runs on.

Every state a connection can be in, every trigger that moves it and where each one leads are
in ``TRANSITIONS``: the supervisor and ``close()`` fire triggers, ``Connection._fire`` is the
only code that changes the state. A trigger that the table does not allow in the current
state is a bug in aiobus and raises at once instead of leaving a connection half-closed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable

from .events import State


class Trigger(enum.Enum):
    ENTER = "enter"
    """``async with`` began: the supervisor starts its first attempt."""
    LINK_UP = "link_up"
    """An attempt opened a link and restored topology and subscriptions on it."""
    LINK_LOST = "link_lost"
    """The live link died; the supervisor waits its backoff and tries again."""
    ATTEMPT_FAILED = "attempt_failed"
    """One attempt failed; the supervisor retries (the state does not change)."""
    GIVE_UP = "give_up"
    """No more attempts: a permanent error at first connect, ``connect_timeout`` passed at
    first connect, or ``max_attempts`` failed in a row. The teardown follows."""
    CLOSE = "close"
    """``close()`` (or the end of ``async with``) began."""
    TORN_DOWN = "torn_down"
    """The teardown finished: no task, link or waiter of the connection is left."""


_OPENING = (State.CONNECTING, State.RECONNECTING)

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.IDLE, Trigger.ENTER): State.CONNECTING,
    (State.IDLE, Trigger.CLOSE): State.CLOSING,
    **{(s, Trigger.LINK_UP): State.CONNECTED for s in _OPENING},
    **{(s, Trigger.ATTEMPT_FAILED): s for s in _OPENING},
    **{(s, Trigger.GIVE_UP): State.CLOSING for s in _OPENING},
    (State.CONNECTED, Trigger.LINK_LOST): State.RECONNECTING,
    **{(s, Trigger.CLOSE): State.CLOSING for s in (*_OPENING, State.CONNECTED)},
    # A close that arrives while a give-up's teardown runs joins it.
    (State.CLOSING, Trigger.CLOSE): State.CLOSING,
    (State.CLOSING, Trigger.TORN_DOWN): State.CLOSED,
}
"""(state, trigger) -> next state. Anything missing is impossible."""

OPEN_STATES = (State.CONNECTING, State.CONNECTED, State.RECONNECTING)


def next_state(state: State, trigger: Trigger) -> State:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise AssertionError(
            f"aiobus bug: {trigger.value!r} cannot happen in state {state.value!r}"
        ) from None


class Deadline:
    """One deadline shared by every step of a close (the flush, each consumer's cancel, the
    link's close), so a close takes at most ``close_timeout`` (plus the 50 ms an aborted
    link is given to notice its socket is gone) however many steps it has;
    ``abort()`` cuts every wait short at once (a close whose caller was cancelled)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self.when = when
        self.aborted = False
        self._scopes: set[asyncio.Timeout] = set()

    def remaining(self) -> float:
        return max(0.0, self.when - self._loop.time())

    async def run(self, awaitable: Awaitable[object]) -> bool:
        """Await within the deadline; False if the deadline cut it short."""
        scope = asyncio.timeout_at(self.when)
        try:
            async with scope:
                self._scopes.add(scope)
                try:
                    await awaitable
                finally:
                    self._scopes.discard(scope)
        except TimeoutError:
            if scope.expired():
                return False
            raise
        return True

    def abort(self) -> None:
        self.aborted = True
        self.when = self._loop.time()
        for scope in list(self._scopes):
            scope.reschedule(self.when)
