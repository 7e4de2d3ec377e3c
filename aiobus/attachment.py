"""A subscription's standing on the current link, as a state machine of its own.

The connection restores subscriptions after every reconnect while the application enters and
leaves them; each subscription's state says what it needs, so a restore under churn never
skips one, never leaks a broker consumer, and one that cannot be restored fails loudly:

    new -> detached -> attaching -> attached -> detached (link lost, consumer ended) -> ...
    any entered state -> closing -> closed;  detached / attaching / attached -> failed

Every allowed move is in ``ALLOWED``; ``Attachment.move`` is the only code that changes it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transports.base import Consumer


class SubscriptionState(enum.Enum):
    NEW = "new"
    """Made by ``subscribe()``; not entered with ``async with`` yet."""
    DETACHED = "detached"
    """Entered; no consumer on the current link (an outage, or waiting for its attach)."""
    ATTACHING = "attaching"
    """A consumer is being attached on the current link."""
    ATTACHED = "attached"
    """Receiving through a consumer on the live link."""
    CLOSING = "closing"
    """Leaving its ``async with`` (or the connection is closing)."""
    FAILED = "failed"
    """Could not be (re-)attached; iteration raises why. Not restored again."""
    CLOSED = "closed"


S = SubscriptionState

ALLOWED: dict[SubscriptionState, frozenset[SubscriptionState]] = {
    S.NEW: frozenset({S.DETACHED, S.CLOSED}),
    S.DETACHED: frozenset({S.ATTACHING, S.CLOSING, S.FAILED}),
    S.ATTACHING: frozenset({S.ATTACHED, S.DETACHED, S.CLOSING, S.FAILED}),
    S.ATTACHED: frozenset({S.DETACHED, S.CLOSING, S.FAILED}),
    S.FAILED: frozenset({S.CLOSING}),
    S.CLOSING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
}


class Attachment:
    """The core's record of one subscription: its state, its consumer on the current link,
    and the adapter's resume state (an MQTT session's subscription, a stream's offset),
    which outlives links and is handed back to the adapter at every re-attach."""

    __slots__ = ("attempt", "consumer", "ended", "resume", "state")

    def __init__(self) -> None:
        self.state = S.NEW
        self.consumer: Consumer | None = None
        self.resume: Any = None
        #: Which attach owns the ATTACHING state: a later attempt (a re-attach after the
        #: broker ended the consumer mid-attach) makes an earlier one's result stale.
        self.attempt = 0
        #: Why the broker ended the consumer while its attach was still under way: the
        #: attach, once it returns, decides what follows (its own error, or a re-attach).
        self.ended: BaseException | None = None

    def move(self, new: SubscriptionState) -> None:
        if new not in ALLOWED[self.state]:
            raise AssertionError(
                f"aiobus bug: a subscription cannot go from {self.state.value} to {new.value}"
            )
        self.state = new
        if new is not S.ATTACHED:
            self.consumer = None

    def begin_attach(self) -> int:
        self.move(S.ATTACHING)
        self.attempt += 1
        self.ended = None
        return self.attempt

    def attaching(self, attempt: int) -> bool:
        """Whether the attach numbered ``attempt`` still owns this subscription."""
        return self.state is S.ATTACHING and self.attempt == attempt

    @property
    def restorable(self) -> bool:
        """Entered and not attached, failed or leaving: the next restore attaches it."""
        return self.state is S.DETACHED
