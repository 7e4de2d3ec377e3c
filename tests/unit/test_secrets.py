"""No password in any repr, str, error text, log record or event.

A hypothesis property drives passwords full of URL delimiters (``@:/%#?``), spaces and
non-ASCII through parsing (percent-encoded as they should be, and raw as users get them
wrong), keyword credentials and the connection object; a few fixed ones go through connect,
refusal, a failed attempt and reconnect on ``memory://``, and a wrong (and a right) password
against the private RabbitMQ over AMQP 0-9-1 and AMQP 1.0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import pickle
import string
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiobus
from aiobus.auth import Credentials, Secret
from aiobus.connection import Connection
from aiobus.events import Event, State
from aiobus.memory_broker import MemoryBroker
from aiobus.testing import FaultProxy
from aiobus.tls import warn_if_unverified
from aiobus.url import Settings, parse
from tests.helpers import through_outage, unique, wait_for_state


@dataclass(frozen=True)
class Password:
    """A generated password and the distinctive pieces it is built from: a leak of any piece
    (a password cut at a delimiter, say) is caught, not only a leak of the whole."""

    value: str
    pieces: tuple[str, ...]

    def needles(self) -> set[str]:
        forms = {self.value, quote(self.value, safe=""), quote(self.value)}
        for piece in self.pieces:
            forms |= {piece, quote(piece, safe="")}
        return forms


# Every piece starts with "Pw", which no message, scheme, host or option name contains.
PIECES = st.text(alphabet=string.ascii_letters + string.digits + "äß漢€", min_size=2, max_size=5)
DELIMITERS = st.text(alphabet="@:/%#? äé", max_size=3)


@st.composite
def passwords(draw: st.DrawFn) -> Password:
    pieces = tuple("Pw" + p for p in draw(st.lists(PIECES, min_size=1, max_size=3)))
    value = draw(DELIMITERS)
    for piece in pieces:
        value += piece + draw(DELIMITERS)
    return Password(value, pieces)


USERS = st.text(alphabet=string.ascii_lowercase + "@: é", min_size=1, max_size=6)
SCHEMES = ["amqp", "amqps", "amqp1", "amqp1s", "mqtt", "mqtts", "mqtt+ws", "mqtt+wss"]
TLS_SCHEMES = [s for s in SCHEMES if s.endswith("s")]


def assert_hidden(password: Password, texts: Iterable[str]) -> None:
    for text in texts:
        for needle in password.needles():
            assert needle not in text, f"password piece {needle!r} shown in {text!r}"


def settings_texts(s: Settings) -> Iterator[str]:
    yield from (str(s), repr(s), s.redacted_url(), repr(s.options), str(s.options))
    yield from (repr(s.credentials), str(s.credentials), repr(Connection(s)))


def error_texts(error: BaseException) -> Iterator[str]:
    """The error as it is printed, chained causes and all."""
    yield str(error)
    yield repr(error)
    yield "".join(traceback.format_exception(error))


def outcome_texts(make: Callable[[], Settings]) -> list[str]:
    """Whatever ``make`` ends in, as text: the settings it made, or the error it raised."""
    try:
        made = make()
    except aiobus.ConfigError as exc:
        return list(error_texts(exc))
    return list(settings_texts(made))


def record_texts(records: Iterable[logging.LogRecord]) -> Iterator[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        yield formatter.format(record)  # the message, plus any traceback and stack


def event_texts(events: Iterable[Event]) -> Iterator[str]:
    for event in events:
        yield repr(event)
        yield event.reason
        if event.error is not None:
            yield from error_texts(event.error)


# --- the Secret type --------------------------------------------------------------------------


def test_a_secret_never_prints_its_value() -> None:
    secret = Secret("hunter2")
    logged = logging.LogRecord("t", logging.INFO, "", 0, "%s %r", (secret, secret), None)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", logged.getMessage()):
        assert "hunter2" not in text
    assert repr(secret) == "'***'" and str(secret) == "***"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") == "hunter2" and secret != "hunter3"
    assert hash(secret) == hash(Secret("hunter2"))
    assert pickle.loads(pickle.dumps(secret)) == secret
    with pytest.raises(AttributeError):
        secret._value = "other"
    with pytest.raises(aiobus.ConfigError, match="must be a str, got bytes"):
        Secret(b"hunter2")  # type: ignore[arg-type]


def test_credentials_hold_the_password_as_a_secret() -> None:
    creds = Credentials("app", "hunter2")
    assert isinstance(creds.password, Secret)
    assert repr(creds) == "Credentials(username='app', password='***')"
    assert creds.reveal_password() == "hunter2"
    assert creds == Credentials("app", Secret("hunter2"))
    assert Credentials("app").reveal_password() is None
    with pytest.raises(aiobus.ConfigError, match=r"tuple of \(str, int\)"):
        parse("amqp://h", credentials=("app", 1234))


# --- the property: parse, keyword credentials, the connection object ------------------------


@settings(max_examples=60, deadline=None)
@given(password=passwords(), user=USERS, scheme=st.sampled_from(SCHEMES))
def test_no_password_in_what_parsing_prints(password: Password, user: str, scheme: str) -> None:
    pw, quser, qpw = password.value, quote(user, safe=""), quote(password.value, safe="")
    path = "/ws" if "+ws" in scheme else "/v" if scheme in ("amqp", "amqps") else ""
    good = f"{scheme}://{quser}:{qpw}@h1:1,h2:2{path}"
    s = parse(good)
    assert s.credentials is not None and s.credentials.reveal_password() == pw
    texts = list(settings_texts(s))
    for broken in (
        f"{scheme}://{quser}:{qpw}@h:x{path}",
        f"{scheme}://{quser}:{qpw}@{path}",
        f"kafka://{quser}:{qpw}@h",
        f"{scheme}://{quser}:{qpw}@h?nope=1",
        f"{scheme}://{quser}:{qpw}@h?verify=false",
        f"{scheme}://{quser}:{qpw}@h#frag",
        # Raw, as users get it wrong: whatever parsing makes of it shows no piece of it.
        f"{scheme}://{user}:{pw}@h:5672{path}",
        f"{scheme}://{user}:{pw}@h:x",
        f"{user}:{pw}@h",
    ):
        texts += outcome_texts(functools.partial(parse, broken))
    texts += outcome_texts(lambda: parse([good, f"{scheme}://{quser}:{qpw}@h3/other"]))
    assert_hidden(password, texts)


@settings(max_examples=40, deadline=None)
@given(password=passwords(), user=USERS)
def test_no_password_in_what_keyword_credentials_print(password: Password, user: str) -> None:
    pw = password.value
    sources: list[Any] = [
        (user, pw),
        Credentials(user, pw),
        (user, Secret(pw)),
        lambda: (user, pw),
        functools.partial(Credentials, user, pw),  # its own repr would show pw
    ]
    texts: list[str] = []
    for source in sources:
        s = parse("amqp://h/v", credentials=source)
        texts += settings_texts(s)
        for url, bad in (("amqp://h/v?nope=1", {}), ("amqp://h/v", {"prefetch": "x"})):
            texts += outcome_texts(functools.partial(parse, url, credentials=source, **bad))
    bus = aiobus.mqtt.connect("broker.example", username=user, password=pw)
    assert bus.settings.credentials is not None
    assert bus.settings.credentials.reveal_password() == pw
    texts += [repr(bus), *settings_texts(bus.settings)]
    texts += outcome_texts(
        lambda: aiobus.mqtt.connect("broker.example", port=0, username=user, password=pw).settings
    )
    assert_hidden(password, texts)


# --- verify=False: a keyword only, and one warning per connection -----------------------------


def test_verify_off_warns_once_naming_every_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    unverified = parse("amqps://app:hunter2@h1:5671,[::1]:5700/", verify=False)
    assert warn_if_unverified(unverified) is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "verify=False" in text and "h1:5671" in text and "[::1]:5700" in text
    assert "hunter2" not in text
    caplog.clear()
    for verified in ("amqps://h", "mqtts://h?verify=true", "amqp://h"):
        assert warn_if_unverified(parse(verified)) is False
    assert not caplog.records


@pytest.mark.parametrize("scheme", TLS_SCHEMES)
def test_verify_off_in_any_tls_url_is_a_config_error(scheme: str) -> None:
    with pytest.raises(aiobus.ConfigError, match="keyword-only decision"):
        parse(f"{scheme}://h?verify=off")


# --- through connect, refusal, failed attempts and reconnect ----------------------------------

NASTY = [
    Password("Pwa@Pwb:/Pwc%40", ("Pwa", "Pwb", "Pwc")),
    Password(" Pwä ß#?Pw漢@", ("Pwä", "Pw漢")),
    Password("%Pw20/@@Pwx y", ("Pw20", "Pwx")),
]


async def wait_for(events: Any, kind: str, count: int = 1, timeout: float = 5) -> list[Event]:
    seen: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            if event.kind == kind:
                seen.append(event)
                if len(seen) == count:
                    return seen
    raise AssertionError(f"event stream ended before {count} {kind!r} events")


async def drain(events: Any) -> list[Event]:
    """Every event a stream kept, once its connection is closed (the stream has ended)."""
    return [event async for event in events]


@pytest.mark.parametrize("password", NASTY, ids=["delimiters", "non-ascii", "percent"])
@pytest.mark.parametrize("given_as", ["tuple", "credentials", "callable"])
async def test_no_password_through_connect_failures_and_reconnect(
    memory_broker: MemoryBroker,
    caplog: pytest.LogCaptureFixture,
    password: Password,
    given_as: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    pw = password.value
    source: Any = {
        "tuple": ("app", pw),
        "credentials": Credentials("app", pw),
        "callable": lambda: ("app", pw),
    }[given_as]
    memory_broker.require_credentials("app", pw)
    bus = aiobus.connect(memory_broker.url(), credentials=source, backoff_initial=0.001)
    everything = bus.events()
    texts = [repr(bus)]
    async with bus:
        texts.append(repr(bus))
        async with bus.events() as events:
            # Attempts that fail while the link is down (refused, then the wrong password
            # expected), then the right one again: a reconnect.
            memory_broker.refuse_connections()
            memory_broker.kill_links("cut by the test")
            await wait_for(events, "attempt_failed", 2)
            memory_broker.refuse_connections(False)
            memory_broker.require_credentials("app", "another password")
            await wait_for(events, "attempt_failed", 1)
            memory_broker.require_credentials("app", pw)
            await wait_for_state(events, State.CONNECTED)
        await bus.publish("k", b"x")
        texts.append(repr(bus))
    texts += event_texts(await drain(everything))
    kinds = {r.getMessage() for r in caplog.records}
    assert any("refused the credentials" in k for k in kinds), kinds
    texts += record_texts(caplog.records)
    assert_hidden(password, texts)


@pytest.mark.parametrize("password", NASTY, ids=["delimiters", "non-ascii", "percent"])
async def test_no_password_when_the_first_connect_is_refused(
    memory_broker: MemoryBroker, caplog: pytest.LogCaptureFixture, password: Password
) -> None:
    caplog.set_level(logging.DEBUG)
    memory_broker.require_credentials("app", "the right one")
    texts: list[str] = []
    with pytest.raises(aiobus.AuthenticationError) as wrong:
        async with aiobus.connect(memory_broker.url(), credentials=("app", password.value)):
            pass
    texts += error_texts(wrong.value)
    memory_broker.refuse_connections()
    with pytest.raises(aiobus.ConnectTimeout) as refused:
        async with aiobus.connect(
            memory_broker.url(), credentials=("app", password.value), connect_timeout=0.05
        ):
            pass
    texts += error_texts(refused.value)
    texts += record_texts(caplog.records)
    assert_hidden(password, texts)


# --- a real broker -------------------------------------------------------------------------

#: Created once on the private node; the password has every delimiter a URL has.
REAL = Password("Pwr@:/%#? Pwé漢", ("Pwr", "Pwé漢"))


@pytest.fixture(scope="module")
def rabbitmq_user(rabbitmq: Any) -> Iterator[str]:
    name = unique("secret-user")
    rabbitmq.ctl("add_user", name, REAL.value)
    try:
        rabbitmq.ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield name
    finally:
        rabbitmq.ctl("delete_user", name)


def _with_credentials(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}"


@pytest.mark.rabbitmq
@pytest.mark.parametrize("which", ["amqp_url", "amqp1_url", "mqtt_url"])
async def test_no_password_against_rabbitmq(
    rabbitmq: Any, rabbitmq_user: str, caplog: pytest.LogCaptureFixture, which: str
) -> None:
    caplog.set_level(logging.DEBUG)
    base = getattr(rabbitmq, which)
    texts: list[str] = []
    # The right password, delimiters and all, gets through: the adapters send the revealed
    # value, percent-decoded once.
    bus = aiobus.connect(_with_credentials(base, rabbitmq_user, REAL.value))
    async with bus:
        texts.append(repr(bus))
    wrong = Password(REAL.value.replace("Pwr", "Pwwrong"), ("Pwwrong", "Pwé漢"))
    with pytest.raises(aiobus.AuthenticationError) as refused:
        async with aiobus.connect(_with_credentials(base, rabbitmq_user, wrong.value)):
            pass
    texts += error_texts(refused.value)
    texts += record_texts(caplog.records)
    assert_hidden(REAL, texts)
    assert_hidden(wrong, texts)


async def test_an_unverified_connection_warns_once_across_reconnects(
    rabbitmq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``verify=False`` on a real TLS link: one WARNING naming the endpoint, however many
    times the link comes back."""
    host, port = rabbitmq.amqps_url.rsplit("@", 1)[1].split("/")[0].rsplit(":", 1)
    async with FaultProxy(host, int(port)) as proxy:
        caplog.set_level(logging.WARNING, logger="aiobus.tls")
        url = proxy.rewrite(rabbitmq.amqps_url)
        endpoint = f"{proxy.host}:{proxy.port}"
        async with aiobus.connect(url, verify=False, backoff_initial=0.01) as bus:
            await through_outage(bus, proxy.cut)
            assert bus.state is State.CONNECTED
    warnings = [r for r in caplog.records if r.name == "aiobus.tls"]
    assert len(warnings) == 1
    assert endpoint in warnings[0].getMessage()
