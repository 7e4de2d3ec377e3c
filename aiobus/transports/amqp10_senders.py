"""Per-address AMQP 1.0 senders, bounded: where the anonymous relay is not used, each address
needs a sender of its own, so at most ``max_senders`` of them are open, each in a session of
its own (RabbitMQ ends the whole session for a bad address).

- A sender nothing was published to for ``sender_idle`` seconds, with nothing queued or
  unsettled, is detached (checked every ``sender_idle / 2`` seconds, least recently used
  first); its session is kept, spare, for the next address, and ended once it has been spare
  for ``sender_idle`` seconds too.
- A new address when all slots are taken takes the session of the least recently used idle
  sender (detached for it); if none is idle the address is *parked*: its messages wait here,
  unsent, until a sender becomes idle (then the address that waited longest goes next), each
  within its own deadline (``SenderState.withdraw`` takes it back then, never to be sent).

Sessions are reused rather than ended and begun again: a begin on a channel whose end RabbitMQ
4.0.5 has only just sent is sometimes never answered (measured), and reuse costs no round trip.
Every change of which senders are open happens in this class.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .amqp10_links import SenderState

if TYPE_CHECKING:
    from .amqp10 import Amqp10Link


class SenderPool:
    """The per-address senders of one AMQP 1.0 connection."""

    __slots__ = ("_timer", "idle_after", "limit", "link", "open", "parked", "spare")

    def __init__(self, link: Amqp10Link, limit: int, idle_after: float) -> None:
        self.link = link
        self.limit = limit
        self.idle_after = idle_after
        self.open: dict[str, SenderState] = {}
        """Open senders by address, least recently used first."""
        self.parked: dict[str, SenderState] = {}
        """Addresses waiting for a slot, in arrival order (their senders not opened)."""
        self.spare: dict[Any, float] = {}
        """Sessions whose sender was detached, reusable, with the time they became spare."""
        self._timer: asyncio.TimerHandle | None = None

    def get(self, address: str) -> SenderState:
        """The sender for ``address``: open, parked, or new (opened now if a slot is free or
        an idle sender gives up its session, else parked until one does)."""
        state = self.open.get(address)
        if state is not None:
            return state
        state = self.parked.get(address)
        if state is not None:
            return state
        state = SenderState(self.link, address, self)
        if not self.parked and self._room():
            self._open(state)
        else:
            self.parked[address] = state  # its message is held once this returns
        return state

    def touch(self, state: SenderState, now: float) -> None:
        """``state`` was just published to: now the most recently used (once per batch)."""
        address = state.address
        assert address is not None
        opened = self.open
        if opened.get(address) is state:
            del opened[address]
            opened[address] = state
            state.last_used = now

    def _room(self) -> bool:
        """A sender may be opened now: a spare session, or under ``max_senders`` with one of
        the broker's channels left over for a subscription, or an idle sender to detach."""
        if self.spare:
            return True
        if len(self.open) < self.limit and self.link.free_channels() > 1:
            return True
        return self._close_lru_idle()

    def _open(self, state: SenderState) -> None:
        assert state.address is not None
        spare = self.spare
        session = None
        if spare:
            session = next(iter(spare))
            del spare[session]
        state.open(session)
        state.last_used = self.link.loop.time()
        self.open[state.address] = state
        if self._timer is None:
            self._timer = self.link.loop.call_later(self.idle_after / 2, self._sweep)

    def _close(self, state: SenderState) -> None:
        """Detach an idle sender; its session becomes spare."""
        assert state.address is not None
        del self.open[state.address]
        state.close()
        self.spare[state.session] = self.link.loop.time()
        self.link.kick()

    def _close_lru_idle(self) -> bool:
        """Detach the least recently used idle sender, if there is one."""
        for state in self.open.values():
            if state.idle:
                self._close(state)
                return True
        return False

    def unpark(self) -> None:
        """Give slots to parked addresses, longest waiting first; an address whose messages
        were all withdrawn meanwhile is dropped instead."""
        parked = self.parked
        while parked:
            address = next(iter(parked))
            state = parked[address]
            if state.idle:  # every message it held was withdrawn
                del parked[address]
                continue
            if not self._room():
                return
            del parked[address]
            self._open(state)
            state.pump()
        self.link.kick()

    def keep_spare(self) -> None:
        """A subscription took a channel: keep one free for the next, if an idle sender's
        session can be ended for it."""
        if self.link.free_channels() < 1:
            if not self.spare:
                self._close_lru_idle()
            for session in list(self.spare)[:1]:
                del self.spare[session]
                session.close()

    def ended(self, state: SenderState) -> None:
        """The broker ended this sender (a detach, or its session's end): its session is
        ended and not reused (the link frees it)."""
        address = state.address
        if address is not None and self.open.get(address) is state:
            del self.open[address]
        session = state.session
        if session is not None:
            self.spare.pop(session, None)
            session.close()
        if self.parked:
            self.unpark()

    def _sweep(self) -> None:
        self._timer = None
        now = self.link.loop.time()
        horizon = now - self.idle_after
        for state in list(self.open.values()):
            if state.last_used > horizon:
                break  # least recently used first: the rest are younger
            if state.idle:
                self._close(state)
        for session, since in list(self.spare.items()):
            if since <= horizon:
                del self.spare[session]
                session.close()  # spare for sender_idle: ended (the link frees it)
        if self.parked:
            self.unpark()
        self.link.kick()
        if (self.open or self.spare) and not self.link.dead.done():
            self._timer = self.link.loop.call_later(self.idle_after / 2, self._sweep)

    def states(self) -> list[SenderState]:
        """Every sender of the pool that may hold messages: open and parked."""
        return [*self.open.values(), *self.parked.values()]

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
