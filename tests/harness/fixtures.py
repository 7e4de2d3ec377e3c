"""pytest plugin: session-wide broker fixtures ``rabbitmq``, ``mosquitto``, ``mosquitto_acl``.

Load with ``pytest_plugins = ["tests.harness.fixtures"]`` in tests/conftest.py.

Where a broker comes from, in order:

1. Endpoints from the environment (e.g. the docker-compose.yml brokers): if any
   ``AIOBUS_TEST_RABBITMQ_*_URL`` is set, ``rabbitmq`` uses them; if any
   ``AIOBUS_TEST_MOSQUITTO_*_URL`` is set, ``mosquitto`` does (``AIOBUS_TEST_CA_FILE`` for TLS).
   Such a broker has ``controllable = False``: its start/stop/kill/restart skip the test.
2. With ``CI`` set or ``AIOBUS_TEST_PROVISION=1``: ``scripts/provision-brokers`` runs (once)
   if the RabbitMQ chroot or the mosquitto binary is missing, then private instances start.
3. Otherwise an existing chroot / installed mosquitto is used, or the test is skipped with
   the reason. Under ``CI`` a broker that cannot be had fails the test instead.

Brokers start lazily (only when a test asks) and are closed at the end of the session. A
controllable broker that a test left killed or stopped is started again before the next test
that uses it. ``mosquitto_acl`` is always a private broker with the ACL ``topic readwrite #``,
``topic deny denied/#``.

Uniform surface of every broker object: ``controllable``, ``running``, ``start()``,
``stop()``, ``kill()``, ``restart(hard=False)``, ``ensure_running()``, ``close()``,
``ca_file``, ``client_cert``, ``client_key``, ``ssl_context(with_client_cert=False)``.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import pytest

from tests.harness.mosquitto import MosquittoBroker, find_mosquitto
from tests.harness.rabbitmq import DEFAULT_ROOT, RabbitMQNode, chroot_ready
from tests.harness.tls import TLSFiles, session_tls

__all__ = ["ExternalMosquitto", "ExternalRabbitMQ", "in_ci", "provisioning_allowed"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVISION_SCRIPT = REPO_ROOT / "scripts" / "provision-brokers"

RABBITMQ_ENV = {
    "amqp_url": "AIOBUS_TEST_RABBITMQ_AMQP_URL",
    "amqps_url": "AIOBUS_TEST_RABBITMQ_AMQPS_URL",
    "amqp1_url": "AIOBUS_TEST_RABBITMQ_AMQP1_URL",
    "amqp1s_url": "AIOBUS_TEST_RABBITMQ_AMQP1S_URL",
    "mqtt_url": "AIOBUS_TEST_RABBITMQ_MQTT_URL",
    "mqtts_url": "AIOBUS_TEST_RABBITMQ_MQTTS_URL",
    "mqtt_ws_url": "AIOBUS_TEST_RABBITMQ_MQTT_WS_URL",
}
MOSQUITTO_ENV = {
    "url": "AIOBUS_TEST_MOSQUITTO_URL",
    "ws_url": "AIOBUS_TEST_MOSQUITTO_WS_URL",
    "tls_url": "AIOBUS_TEST_MOSQUITTO_TLS_URL",
}
CA_ENV = "AIOBUS_TEST_CA_FILE"
MOSQUITTO_ACL = ["topic readwrite #", "topic deny denied/#"]

_HOW_TO = (
    "set AIOBUS_TEST_PROVISION=1 to provision and start private brokers "
    "(root, Debian; runs scripts/provision-brokers), or point the AIOBUS_TEST_* variables at "
    "running brokers (see docker-compose.yml)"
)


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def in_ci() -> bool:
    return _truthy(os.environ.get("CI"))


def provisioning_allowed() -> bool:
    return in_ci() or os.environ.get("AIOBUS_TEST_PROVISION") == "1"


def _unavailable(reason: str) -> NoReturn:
    """No broker: a failure under CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"broker unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# --- brokers given by the environment ---------------------------------------------------------


class _External:
    """Endpoints of a broker that something else runs: it cannot be killed or restarted."""

    controllable = False
    running = True
    kind = "broker"
    _env_names: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._ca = os.environ.get(CA_ENV) or None

    def _get(self, attr: str) -> str:
        value = os.environ.get(self._env_names[attr])
        if not value:
            _unavailable(f"{self._env_names[attr]} is not set ({self.kind} from environment)")
        return value

    def _cannot(self, what: str) -> NoReturn:
        pytest.skip(f"{self.kind} broker from environment cannot be {what}")

    def start(self) -> None:
        self._cannot("started")

    def stop(self, timeout: float = 30.0) -> None:
        self._cannot("stopped")

    def kill(self) -> None:
        self._cannot("killed")

    def restart(self, *, hard: bool = False) -> None:
        self._cannot("restarted")

    def ensure_running(self) -> bool:
        return False

    def close(self) -> None:
        pass

    @property
    def ca_file(self) -> str:
        if self._ca is None:
            _unavailable(f"{CA_ENV} is not set ({self.kind} from environment)")
        return self._ca

    @property
    def client_cert(self) -> str:
        pytest.skip(f"no client certificate for a {self.kind} broker from environment")

    @property
    def client_key(self) -> str:
        pytest.skip(f"no client certificate for a {self.kind} broker from environment")

    def ssl_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if with_client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def _url_property(attr: str) -> property:
    def getter(self: _External) -> str:
        return self._get(attr)

    return property(getter, doc=f"URL from ${attr}")


class ExternalRabbitMQ(_External):
    kind = "RabbitMQ"
    _env_names = RABBITMQ_ENV
    amqp_url = _url_property("amqp_url")
    amqps_url = _url_property("amqps_url")
    amqp1_url = _url_property("amqp1_url")
    amqp1s_url = _url_property("amqp1s_url")
    mqtt_url = _url_property("mqtt_url")
    mqtts_url = _url_property("mqtts_url")
    mqtt_ws_url = _url_property("mqtt_ws_url")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        pytest.skip("rabbitmqctl is not available for a RabbitMQ broker from environment")

    def sync_metadata(self) -> None:
        """Nothing to do: such a broker is never killed by the tests."""

    def __repr__(self) -> str:
        return f"<ExternalRabbitMQ {os.environ.get(RABBITMQ_ENV['amqp_url'])}>"


class ExternalMosquitto(_External):
    kind = "Mosquitto"
    _env_names = MOSQUITTO_ENV
    url = _url_property("url")
    ws_url = _url_property("ws_url")
    tls_url = _url_property("tls_url")

    def persisted(self, needle: bytes) -> bool:
        self._cannot("inspected")

    def wait_persisted(self, needle: bytes, timeout: float = 10.0) -> None:
        self._cannot("inspected")

    def __repr__(self) -> str:
        return f"<ExternalMosquitto {os.environ.get(MOSQUITTO_ENV['url'])}>"


def _env_configured(names: dict[str, str]) -> bool:
    return any(os.environ.get(v) for v in names.values())


# --- provisioning -------------------------------------------------------------------------------

_provision_lock = threading.Lock()
_provision_result: tuple[bool, str] | None = None


def _say(config: pytest.Config, line: str) -> None:
    """Print a line to the terminal even while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


def _provision(config: pytest.Config) -> tuple[bool, str]:
    """Run scripts/provision-brokers once per session; (ok, message)."""
    global _provision_result
    with _provision_lock:
        if _provision_result is not None:
            return _provision_result
        if os.geteuid() != 0:
            _provision_result = (False, "provisioning needs root (apt-get, debootstrap, chroot)")
            return _provision_result
        log = Path(config.rootpath) / ".aiobus-test" / "provision-brokers.log"
        log.parent.mkdir(exist_ok=True)
        _say(config, f"\naiobus: provisioning brokers with {PROVISION_SCRIPT} (log: {log})")
        t0 = time.monotonic()
        with log.open("wb") as out:
            try:
                rc = subprocess.run(
                    ["bash", str(PROVISION_SCRIPT)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=1200,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        took = time.monotonic() - t0
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        if rc == 0:
            _say(config, f"aiobus: provisioning done in {took:.0f} s")
            _provision_result = (True, "")
        else:
            _provision_result = (False, f"scripts/provision-brokers failed (rc {rc}):\n{tail}")
        return _provision_result


def _need(config: pytest.Config, have: bool, what: str) -> None:
    """Make sure ``have`` holds (provisioning if allowed), or skip/fail with the reason."""
    if have:
        return
    if not provisioning_allowed():
        _unavailable(f"{what} is missing; {_HOW_TO}")
    ok, message = _provision(config)
    if not ok:
        _unavailable(f"{what} is missing and provisioning failed: {message}")


# --- fixtures -------------------------------------------------------------------------------

_active: dict[str, Any] = {}


@pytest.fixture(scope="session")
def tls_files() -> TLSFiles:
    """The session's throwaway CA, server and client certificates (host paths)."""
    return session_tls()


@pytest.fixture(scope="session")
def rabbitmq(request: pytest.FixtureRequest) -> Iterator[RabbitMQNode | ExternalRabbitMQ]:
    """A RabbitMQ 4 broker for the session: a private node, or endpoints from the environment."""
    if _env_configured(RABBITMQ_ENV):
        yield ExternalRabbitMQ()
        return
    _need(request.config, chroot_ready(DEFAULT_ROOT), f"the RabbitMQ 4 chroot at {DEFAULT_ROOT}")
    if not chroot_ready(DEFAULT_ROOT):
        _unavailable(f"the RabbitMQ 4 chroot at {DEFAULT_ROOT} is still missing")
    if os.geteuid() != 0:
        _unavailable("the private RabbitMQ node needs root (chroot, unshare); " + _HOW_TO)
    node = RabbitMQNode(DEFAULT_ROOT)
    _active["rabbitmq"] = node
    try:
        node.start()
        yield node
    finally:
        _active.pop("rabbitmq", None)
        node.close()


def _private_mosquitto(
    request: pytest.FixtureRequest, name: str, acl: list[str] | None
) -> Iterator[MosquittoBroker]:
    _need(request.config, find_mosquitto() is not None, "the mosquitto binary")
    if find_mosquitto() is None:
        _unavailable("the mosquitto binary is still missing")
    broker = MosquittoBroker(acl=acl)
    _active[name] = broker
    try:
        broker.start()
        yield broker
    finally:
        _active.pop(name, None)
        broker.close()


@pytest.fixture(scope="session")
def mosquitto(request: pytest.FixtureRequest) -> Iterator[MosquittoBroker | ExternalMosquitto]:
    """A Mosquitto 2 broker for the session: a private one, or endpoints from the environment."""
    if _env_configured(MOSQUITTO_ENV):
        yield ExternalMosquitto()
        return
    yield from _private_mosquitto(request, "mosquitto", None)


@pytest.fixture(scope="session")
def mosquitto_acl(request: pytest.FixtureRequest) -> Iterator[MosquittoBroker]:
    """A second private Mosquitto whose ACL denies ``denied/#`` (everything else readwrite)."""
    yield from _private_mosquitto(request, "mosquitto_acl", list(MOSQUITTO_ACL))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start again a controllable broker that an earlier test left killed or stopped."""
    names = getattr(item, "fixturenames", ())
    for name, broker in list(_active.items()):
        if name in names and broker.controllable and broker.ensure_running():
            _say(item.config, f"\naiobus: {name} was down after an earlier test; started again")
