"""A private RabbitMQ 4 node run from the Debian 13 chroot (see shared/brokers.md).

The node lives in its own directory under ``$ROOT/tmp`` (the chroot sees it as ``/tmp/...``),
listens only on free 127.0.0.1 ports, runs its own epmd on a free port, and is this process's
child: ``kill()`` is a SIGKILL of beam.smp itself, ``restart()`` boots it again on the same
ports and data directory so durable state survives.

Listeners: AMQP 0-9-1 and AMQP 1.0 share the plain port (RabbitMQ 4 serves 1.0 natively), the
TLS port serves both over TLS; MQTT, MQTT over TLS, and MQTT over WebSocket (``/ws``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from tests.harness import _process
from tests.harness.ports import LOOPBACK, free_ports, port_is_open, wait_for_ports
from tests.harness.tls import TLSFiles, session_tls

__all__ = ["DEFAULT_ROOT", "RabbitMQNode", "RabbitMQStartError", "chroot_ready"]

DEFAULT_ROOT = Path(os.environ.get("AIOBUS_RABBITMQ_ROOT", "/var/lib/aiobus/rabbitmq4-root"))
NODE_DIR_PREFIX = "aiobus-rmq-"
NODENAME = "aiobus@localhost"
_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
_EPMD = "/usr/bin/epmd"
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# A private mount namespace: the /proc mount inside the chroot never shows on the host.
_UNSHARE = ["unshare", "--mount", "--propagation", "private", "--"]


class RabbitMQStartError(RuntimeError):
    """The node did not come up; the message carries the tail of its logs."""


def chroot_ready(root: Path = DEFAULT_ROOT) -> bool:
    """True if ``root`` holds a complete RabbitMQ chroot made by scripts/provision-brokers."""
    return (
        (root / _SERVER.lstrip("/")).exists()
        and (root / _EPMD.lstrip("/")).exists()
        and (root / ".aiobus-provisioned").exists()
    )


_live: weakref.WeakSet[RabbitMQNode] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:  # a crashed or interrupted run must not leave beam/epmd
    for node in list(_live):
        with contextlib.suppress(Exception):
            node.close()


def sweep_stale(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Remove node directories (and kill their beam/epmd) left by test processes that died."""
    removed: list[Path] = []
    base = root / "tmp"
    if not base.is_dir():
        return removed
    for directory in base.glob(NODE_DIR_PREFIX + "*"):
        owner = _process.read_owner(directory)
        if owner is not None and _process.owner_alive(owner):
            continue
        if owner is None and time.time() - directory.stat().st_mtime < 300:
            continue  # being set up right now by someone else
        marker = f"{_chroot_path(root, directory)}/".encode()
        _process.kill_verified(owner.get("beam_pid") if owner else None, marker)
        epmd_port = owner.get("epmd_port") if owner else None
        if isinstance(epmd_port, int):
            _epmd_kill(root, epmd_port)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _chroot_path(root: Path, host_path: Path) -> str:
    return "/" + str(host_path.relative_to(root))


def _epmd_kill(root: Path, port: int, timeout: float = 10.0) -> None:
    """Stop the epmd on ``port`` (it outlives the node). epmd refuses while a node is still
    registered, which lasts a moment after the node dies: retry until the port closes."""
    deadline = time.monotonic() + timeout
    while port_is_open(LOOPBACK, port):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["chroot", str(root), _EPMD, "-kill"],
                env={"PATH": _PATH, "ERL_EPMD_PORT": str(port), "ERL_EPMD_ADDRESS": LOOPBACK},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=15,
                check=False,
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)  # retry interval


class RabbitMQNode(_process.ManagedBroker):
    """A private RabbitMQ 4 node; see the module docstring."""

    controllable = True
    host = LOOPBACK

    def __init__(
        self,
        root: Path | str = DEFAULT_ROOT,
        *,
        tls: TLSFiles | None = None,
        extra_config: Sequence[str] = (),
        boot_timeout: float = 60.0,
    ) -> None:
        self.root = Path(root)
        if not chroot_ready(self.root):
            raise RabbitMQStartError(
                f"no RabbitMQ chroot at {self.root}: run scripts/provision-brokers as root"
            )
        sweep_stale(self.root)
        self.boot_timeout = boot_timeout
        self._extra_config = list(extra_config)
        super().__init__()
        self._ctl_lock = threading.Lock()  # the CLI has one dist port per node: one call at a time
        (self.root / "tmp").mkdir(exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=NODE_DIR_PREFIX, dir=self.root / "tmp"))
        self.dir.chmod(0o755)
        self._cdir = _chroot_path(self.root, self.dir)  # the same directory as the node sees it
        _process.write_owner(self.dir)
        for sub in ("data", "log", "home", "tls"):
            (self.dir / sub).mkdir()
        (
            self.amqp_port,
            self.amqps_port,
            self.mqtt_port,
            self.mqtts_port,
            self.ws_port,
            self.epmd_port,
            self.dist_port,
            self.ctl_dist_port,
        ) = free_ports(8)
        self.tls_files = tls or session_tls()  # host paths, for clients
        self.tls_chroot = self.tls_files.copy_to(self.dir / "tls")  # node reads these
        self._write_config()
        self.log_file = self.dir / "log" / "console.log"
        self.boot_seconds: list[float] = []
        _live.add(self)

    # --- configuration -----------------------------------------------------------------

    def _cpath(self, host_path: Path) -> str:
        return _chroot_path(self.root, host_path)

    def _write_config(self) -> None:
        t = self.tls_chroot
        lines = [
            f"listeners.tcp.1 = {LOOPBACK}:{self.amqp_port}",
            f"listeners.ssl.1 = {LOOPBACK}:{self.amqps_port}",
            f"mqtt.listeners.tcp.1 = {LOOPBACK}:{self.mqtt_port}",
            f"mqtt.listeners.ssl.1 = {LOOPBACK}:{self.mqtts_port}",
            f"web_mqtt.tcp.ip = {LOOPBACK}",
            f"web_mqtt.tcp.port = {self.ws_port}",
            "web_mqtt.ws_path = /ws",
            f"ssl_options.cacertfile = {self._cpath(t.ca_file)}",
            f"ssl_options.certfile = {self._cpath(t.server_cert)}",
            f"ssl_options.keyfile = {self._cpath(t.server_key)}",
            # Client certificates are optional; if one is sent it must chain to the test CA.
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
            # guest/guest only from loopback (we always connect via 127.0.0.1).
            "loopback_users.guest = true",
            # MQTT without credentials logs in as anonymous_login_user (guest by default).
            "mqtt.allow_anonymous = true",
            "log.console = false",
            "log.file.level = info",
            *self._extra_config,
        ]
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt,rabbitmq_web_mqtt].\n")

    def _env(self) -> dict[str, str]:
        d = self._cdir
        return {
            "PATH": _PATH,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": f"{d}/home",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "ERL_CRASH_DUMP": f"{d}/log/erl_crash.dump",
            "RABBITMQ_NODENAME": NODENAME,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": f"{d}/rabbitmq-env.conf",  # absent: skip /etc/rabbitmq
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{d}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{d}/data",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_PID_FILE": f"{d}/rabbit.pid",
            # With ALLOW_INPUT every launcher step execs: the child we own *is* beam.smp.
            "RABBITMQ_ALLOW_INPUT": "1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}"
            ),
        }

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def listener_ports(self) -> list[int]:
        return [self.amqp_port, self.amqps_port, self.mqtt_port, self.mqtts_port, self.ws_port]

    def start(self) -> None:
        """Boot the node and wait (bounded) until every listener accepts connections."""
        with self._lock:
            if self._closed:
                raise RuntimeError("node is closed")
            if self.running:
                raise RuntimeError("node is already running")
            t0 = time.monotonic()
            script = 'mount -t proc proc "$1/proc" || echo "aiobus: /proc not mounted" >&2; '
            script += f'exec chroot "$1" {_SERVER}'
            with self.log_file.open("ab") as log:
                log.write(f"\n===== aiobus harness: start at {time.ctime()} =====\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    [*_UNSHARE, "/bin/sh", "-c", script, "sh", str(self.root)],
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.dir,
                )
            _process.write_owner(self.dir, beam_pid=self._proc.pid, epmd_port=self.epmd_port)
            try:
                wait_for_ports(
                    LOOPBACK, self.listener_ports, self.boot_timeout, alive=lambda: self.running
                )
            except (TimeoutError, RuntimeError) as exc:
                rc = self._proc.poll()
                if rc is None:
                    _process.signal_and_wait(self._proc, signal.SIGKILL, 10)
                raise RabbitMQStartError(
                    f"RabbitMQ node in {self.dir} did not start ({exc}; exit code {rc}).\n"
                    f"--- console ---\n{_process.log_tail(self.log_file)}\n"
                    f"--- node log ---\n{_process.log_tail(self._node_log())}"
                ) from exc
            self.boot_seconds.append(time.monotonic() - t0)

    def _node_log(self) -> Path:
        return self.dir / "log" / f"{NODENAME}.log"

    stop_timeout = 30.0

    def _after_close(self) -> None:
        _epmd_kill(self.root, self.epmd_port)
        _live.discard(self)

    def __enter__(self) -> RabbitMQNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- CLI -----------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -q -n aiobus@localhost ARGS`` in the chroot; return its stdout."""
        d = self._cdir
        cmd = [
            "chroot",
            str(self.root),
            "env",
            f"PATH={_PATH}",
            f"HOME={d}/home",  # the Erlang cookie lives here (same as the node's)
            f"ERL_EPMD_PORT={self.epmd_port}",  # never the system epmd on 4369
            f"ERL_EPMD_ADDRESS={LOOPBACK}",
            "LANG=C.UTF-8",
            "LC_ALL=C.UTF-8",
            f"RABBITMQ_CONF_ENV_FILE={d}/rabbitmq-env.conf",
            f"RABBITMQ_CTL_DIST_PORT_MIN={self.ctl_dist_port}",
            f"RABBITMQ_CTL_DIST_PORT_MAX={self.ctl_dist_port}",
            "RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
            _CTL,
            "-q",
            "-n",
            NODENAME,
            *args,
        ]
        with self._ctl_lock:
            res = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
                env={"PATH": _PATH},
            )
        if res.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({res.returncode}): "
                f"{res.stdout.decode(errors='replace')}{res.stderr.decode(errors='replace')}"
            )
        return res.stdout.decode(errors="replace")

    def sync_metadata(self) -> None:
        """Flush the node's metadata store to disk (topology declared just now survives kill -9).

        RabbitMQ 4.0 keeps queue/exchange records in Mnesia, whose transaction log is written
        through a buffer: ``mnesia:sync_log()`` forces it out. A no-op for the data itself
        (persistent messages are on disk once confirmed).
        """
        self.ctl("eval", "mnesia:sync_log().")

    # --- endpoints -----------------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}/"

    @property
    def amqps_url(self) -> str:
        return f"amqps://guest:guest@{LOOPBACK}:{self.amqps_port}/"

    @property
    def amqp1_url(self) -> str:
        return f"amqp1://guest:guest@{LOOPBACK}:{self.amqp_port}"

    @property
    def amqp1s_url(self) -> str:
        return f"amqp1s://guest:guest@{LOOPBACK}:{self.amqps_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://guest:guest@{LOOPBACK}:{self.mqtt_port}"

    @property
    def mqtts_url(self) -> str:
        return f"mqtts://guest:guest@{LOOPBACK}:{self.mqtts_port}"

    @property
    def mqtt_ws_url(self) -> str:
        return f"mqtt+ws://guest:guest@{LOOPBACK}:{self.ws_port}/ws"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RabbitMQNode {state} amqp={self.amqp_port} mqtt={self.mqtt_port} {self.dir}>"
