"""Process helpers shared by the broker classes: owned children, stale-run sweeping, log tails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.harness.tls import TLSFiles

OWNER_FILE = "aiobus-owner.json"


def proc_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of ``pid``, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_environ_contains(pid: int, needle: bytes) -> bool:
    """True if the environment or command line of ``pid`` contains ``needle``."""
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if needle in f.read():
                    return True
        except OSError:
            continue
    return False


def write_owner(directory: Path, **extra: object) -> None:
    """Record which process owns ``directory`` (and what it started), for later sweeping."""
    data = {"owner_pid": os.getpid(), "owner_start": proc_start_time(os.getpid()), **extra}
    tmp = directory / (OWNER_FILE + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(directory / OWNER_FILE)


def read_owner(directory: Path) -> dict[str, object] | None:
    try:
        data = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owner_alive(owner: dict[str, object]) -> bool:
    pid = owner.get("owner_pid")
    if not isinstance(pid, int):
        return False
    start = proc_start_time(pid)
    return start is not None and start == owner.get("owner_start")


def proc_gone(pid: int) -> bool:
    """True if ``pid`` has exited (absent, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2 :].startswith(b"Z")


def kill_verified(pid: object, marker: bytes, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` only if it still is the process we started (its env/cmdline has
    ``marker``), and wait (bounded) until it has exited. It is not our child: no wait()."""
    if not (isinstance(pid, int) and pid > 1 and proc_environ_contains(pid, marker)):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not proc_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def signal_and_wait(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send ``sig`` to the child (and its process group); wait; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)  # own session: pid == pgid; takes helpers down too
            else:
                proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


class ManagedBroker:
    """What every private broker shares: it owns its child process and directory, and can be
    killed, stopped, restarted on the same ports and data, and closed. Subclasses set ``dir``,
    implement ``start()`` and may add clean-up after the process is gone."""

    dir: Path
    tls_files: TLSFiles
    """The test CA and certificates, as host paths (what clients use)."""
    stop_timeout = 15.0

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the broker and reap it: an abrupt crash, no clean shutdown."""
        with self._lock:
            if self._proc is not None:
                signal_and_wait(self._proc, signal.SIGKILL, 10)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM: a clean stop; SIGKILL if it takes longer than ``timeout``."""
        with self._lock:
            if self._proc is not None:
                signal_and_wait(self._proc, signal.SIGTERM, timeout or self.stop_timeout)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL if ``hard``) and start again on the same ports and data."""
        with self._lock:
            if hard:
                self.kill()
            else:
                self.stop()
            self.start()

    def ensure_running(self) -> bool:
        """Start the broker if it is down (e.g. a test killed it); True if it had to."""
        with self._lock:
            if self.running or self._closed:
                return False
            self.start()
            return True

    def close(self) -> None:
        """Stop the broker and remove its directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._proc is not None:
                    signal_and_wait(self._proc, signal.SIGTERM, self.stop_timeout)
            finally:
                self._after_close()
                shutil.rmtree(self.dir, ignore_errors=True)

    def _after_close(self) -> None:
        """Clean-up once the process is gone (e.g. RabbitMQ's epmd)."""

    @property
    def ca_file(self) -> str:
        return str(self.tls_files.ca_file)

    @property
    def client_cert(self) -> str:
        return str(self.tls_files.client_cert)

    @property
    def client_key(self) -> str:
        return str(self.tls_files.client_key)

    def ssl_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        """A client SSL context trusting the test CA."""
        return self.tls_files.client_context(with_client_cert=with_client_cert)
