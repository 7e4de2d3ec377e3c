"""Free loopback ports for private brokers, and bounded readiness polling.

Ports are picked outside the kernel's ephemeral range when possible: a broker keeps its ports
across a kill and restart, and while it is down an ephemeral port could be handed to some
client socket as its local port, which would then make the restart fail with EADDRINUSE.
Each candidate is checked by binding it on 127.0.0.1; every port of one request is held bound
until all are chosen, so one node never gets the same port twice, and ports handed out earlier
in this process are not handed out again.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import Callable, Iterable

__all__ = ["PortNotReadyError", "free_port", "free_ports", "wait_for_port", "wait_for_ports"]

LOOPBACK = "127.0.0.1"

# Default ports of system brokers and Erlang: never hand these out.
_RESERVED = frozenset({1883, 4369, 5671, 5672, 8883, 8080, 9001, 15672, 15675, 25672, 61613})
_handed_out: set[int] = set()
# Own generator: test plugins that reseed the global one (per test) must not make workers agree.
_rng = random.SystemRandom()


class PortNotReadyError(TimeoutError):
    """A port did not accept connections before the deadline."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _try_bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            return None
        raise
    return sock


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that are free on 127.0.0.1 right now."""
    low, _high = _ephemeral_range()
    # Candidates below the ephemeral range (and above the well-known/registered busy area).
    pool_low, pool_high = 20000, max(20000, low - 1)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        attempts = 0
        while len(ports) < count:
            attempts += 1
            if pool_high > pool_low and attempts <= 200 * count:
                port = _rng.randint(pool_low, pool_high)
                if port in _RESERVED or port in _handed_out or port in ports:
                    continue
                sock = _try_bind(port)
                if sock is None:
                    continue
            else:
                # Fallback: let the kernel choose (ephemeral range).
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((LOOPBACK, 0))
                port = sock.getsockname()[1]
                if port in _RESERVED or port in _handed_out or port in ports:
                    sock.close()
                    continue
            held.append(sock)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    _handed_out.update(ports)
    return ports


def free_port() -> int:
    """Return one free port on 127.0.0.1."""
    return free_ports(1)[0]


def port_is_open(host: str, port: int, timeout: float = 0.25) -> bool:
    """True if a TCP connect to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_ports(
    host: str,
    ports: Iterable[int],
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll TCP connects until every port accepts, or raise PortNotReadyError at the deadline.

    ``alive``, if given, is called between polls; when it returns False the wait stops at once
    (the process that should open the ports has died) with a RuntimeError.
    """
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while True:
        pending = [p for p in pending if not port_is_open(host, p)]
        if not pending:
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process exited before {host} ports {pending} opened")
        if time.monotonic() >= deadline:
            raise PortNotReadyError(f"{host} ports {pending} not open after {timeout:.1f} s")
        time.sleep(interval)  # polling interval of a readiness probe, not synchronisation


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll TCP connects to ``host:port`` until it accepts; bounded by ``timeout`` seconds."""
    wait_for_ports(host, [port], timeout, alive=alive)


def wait_for_port_closed(host: str, port: int, timeout: float) -> None:
    """Poll until ``host:port`` refuses connections; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while port_is_open(host, port):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} still open after {timeout:.1f} s")
        time.sleep(0.05)
