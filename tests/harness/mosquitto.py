"""A private Mosquitto 2 broker: plain TCP, WebSocket and TLS listeners on free loopback ports.

Persistence is on with ``autosave_on_changes true`` and ``autosave_interval 1``, so the
in-memory database is written after every change and persistent sessions survive kill -9
(see shared/brokers.md). ``wait_persisted(payload)`` waits until a message is in the saved
database, an event to wait on before a kill instead of a sleep.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from tests.harness import _process
from tests.harness.ports import LOOPBACK, free_ports, wait_for_ports
from tests.harness.tls import TLSFiles, session_tls

__all__ = ["MosquittoBroker", "MosquittoStartError", "find_mosquitto"]

DIR_PREFIX = "aiobus-mosquitto-"


class MosquittoStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (``$AIOBUS_MOSQUITTO_BIN``, PATH, /usr/sbin), or None."""
    env = os.environ.get("AIOBUS_MOSQUITTO_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


_live: weakref.WeakSet[MosquittoBroker] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:  # a crashed or interrupted run must not leave brokers behind
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.close()


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove broker directories (killing their mosquitto) left by test processes that died."""
    base = base or Path(tempfile.gettempdir())
    removed: list[Path] = []
    for directory in base.glob(DIR_PREFIX + "*"):
        owner = _process.read_owner(directory)
        if owner is not None and _process.owner_alive(owner):
            continue
        if owner is None and time.time() - directory.stat().st_mtime < 300:
            continue
        if owner is not None:
            _process.kill_verified(owner.get("broker_pid"), f"{directory}/".encode())
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


class MosquittoBroker(_process.ManagedBroker):
    """A private ``mosquitto -c conf``; see the module docstring."""

    controllable = True
    host = LOOPBACK

    def __init__(
        self,
        *,
        tcp_nodelay: bool = True,
        acl: Sequence[str] | None = None,
        tls: TLSFiles | None = None,
        extra_config: Sequence[str] = (),
        verbose: bool = False,
        binary: str | None = None,
        boot_timeout: float = 15.0,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise MosquittoStartError("mosquitto binary not found (apt-get install mosquitto)")
        self.binary: str = found
        sweep_stale()
        self.boot_timeout = boot_timeout
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        _process.write_owner(self.dir)
        self.port, self.ws_port, self.tls_port = free_ports(3)
        self.tls_files = tls or session_tls()
        self.acl = list(acl) if acl is not None else None
        self.conf_file = self.dir / "mosquitto.conf"
        self.log_file = self.dir / "mosquitto.log"
        self.console_file = self.dir / "console.log"
        self.db_file = self.dir / "mosquitto.db"
        self._write_config(tcp_nodelay, extra_config, verbose)
        self.boot_seconds: list[float] = []
        _live.add(self)

    def _write_config(self, tcp_nodelay: bool, extra: Sequence[str], verbose: bool) -> None:
        t = self.tls_files
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "user root",  # as root it would otherwise drop to 'mosquitto' and fail to save
            f"set_tcp_nodelay {'true' if tcp_nodelay else 'false'}",
            "persistence true",
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            # Save after every change (not every 30 min): sessions survive kill -9.
            "autosave_on_changes true",
            "autosave_interval 1",
            f"log_dest file {self.log_file}",
            *(
                ["log_type all"]
                if verbose
                else [
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                ]
            ),
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.acl is not None:
            acl_file = self.dir / "acl"
            acl_file.write_text("\n".join(self.acl) + "\n")
            lines.append(f"acl_file {acl_file}")
        lines += [
            f"listener {self.port} {LOOPBACK}",
            f"listener {self.ws_port} {LOOPBACK}",
            "protocol websockets",
            f"listener {self.tls_port} {LOOPBACK}",
            f"cafile {t.ca_file}",
            f"certfile {t.server_cert}",
            f"keyfile {t.server_key}",
            "require_certificate false",
            *extra,
        ]
        self.conf_file.write_text("\n".join(lines) + "\n")

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def listener_ports(self) -> list[int]:
        return [self.port, self.ws_port, self.tls_port]

    def start(self) -> None:
        """Start the broker and wait (bounded) until every listener accepts connections."""
        with self._lock:
            if self._closed:
                raise RuntimeError("broker is closed")
            if self.running:
                raise RuntimeError("broker is already running")
            t0 = time.monotonic()
            with self.console_file.open("ab") as console:
                self._proc = subprocess.Popen(
                    [self.binary, "-c", str(self.conf_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.dir,
                )
            _process.write_owner(self.dir, broker_pid=self._proc.pid)
            try:
                wait_for_ports(
                    LOOPBACK, self.listener_ports, self.boot_timeout, alive=lambda: self.running
                )
            except (TimeoutError, RuntimeError) as exc:
                rc = self._proc.poll()
                if rc is None:
                    _process.signal_and_wait(self._proc, signal.SIGKILL, 10)
                raise MosquittoStartError(
                    f"mosquitto in {self.dir} did not start ({exc}; exit code {rc}).\n"
                    f"--- console ---\n{_process.log_tail(self.console_file)}\n"
                    f"--- log ---\n{_process.log_tail(self.log_file)}"
                ) from exc
            self.boot_seconds.append(time.monotonic() - t0)

    stop_timeout = 15.0

    def _after_close(self) -> None:
        _live.discard(self)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- persistence -------------------------------------------------------------------

    def persisted(self, needle: bytes) -> bool:
        """True if ``needle`` (e.g. a unique payload) is in the saved database file now."""
        try:
            return needle in self.db_file.read_bytes()  # replaced by rename: never half-written
        except OSError:
            return False

    def wait_persisted(self, needle: bytes, timeout: float = 10.0) -> None:
        """Wait (bounded) until ``needle`` is in the saved database: safe to kill -9 after."""
        deadline = time.monotonic() + timeout
        while not self.persisted(needle):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{needle!r} not in {self.db_file} after {timeout:.1f} s")
            time.sleep(0.01)  # polling a file for an event, not synchronisation by time

    # --- endpoints -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"mqtt+ws://{LOOPBACK}:{self.ws_port}/mqtt"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.tls_port}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {state} port={self.port} {self.dir}>"
