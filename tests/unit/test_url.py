"""URL parsing, options and redaction."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aiobus
from aiobus.settings import AmqpOptions, MqttOptions
from aiobus.url import Endpoint, parse


def test_defaults_per_scheme() -> None:
    cases = {
        "mqtt://h": ("mqtt", 1883, False, False),
        "mqtts://h": ("mqtt", 8883, True, False),
        "mqtt+ws://h": ("mqtt", 80, False, True),
        "mqtt+wss://h": ("mqtt", 443, True, True),
        "amqp://h": ("amqp091", 5672, False, False),
        "amqps://h": ("amqp091", 5671, True, False),
        "amqp1://h": ("amqp10", 5672, False, False),
        "amqp1s://h": ("amqp10", 5671, True, False),
    }
    for url, (protocol, port, tls, ws) in cases.items():
        s = parse(url)
        assert (s.protocol, s.endpoints[0].port, s.tls, s.websocket) == (protocol, port, tls, ws)


def test_amqp_vhost_and_credentials() -> None:
    s = parse("amqp://guest:gu%40st@rabbit:5673/my%2Fvhost?heartbeat=10&max_in_flight=500")
    assert s.credentials == aiobus.Credentials("guest", "gu@st")
    assert s.endpoints == (Endpoint("rabbit", 5673),)
    assert s.path == "my/vhost"
    assert isinstance(s.options, AmqpOptions)
    assert s.options.heartbeat == 10.0 and s.options.max_in_flight == 500
    assert parse("amqp://h/").path == "/"
    assert parse("amqp://h").path == "/"


def test_websocket_path_and_mqtt_options() -> None:
    s = parse("mqtt+ws://h:8080/ws?protocol=5&client_id=dev-1&qos=2&clean_session=false")
    assert s.path == "/ws"
    assert isinstance(s.options, MqttOptions)
    assert (s.options.protocol, s.options.client_id, s.options.qos) == (5, "dev-1", 2)
    assert s.options.clean_session is False
    assert parse("mqtt+ws://h").path == "/mqtt"


def test_several_hosts_in_one_url_and_as_a_list() -> None:
    s = parse("amqp://u:p@a:1,b,[::1]:3/v")
    assert s.endpoints == (Endpoint("a", 1), Endpoint("b", 5672), Endpoint("::1", 3))
    listed = parse(["amqp://u:p@a:1/v", "amqp://u:p@b:2/v"])
    assert listed.endpoints == (Endpoint("a", 1), Endpoint("b", 2))
    with pytest.raises(aiobus.ConfigError, match="differ only in host and port"):
        parse(["amqp://u:p@a/v", "amqp://u:p@b/other"])


def test_memory_urls() -> None:
    assert parse("memory://").path == "default"
    s = parse("memory://shop?topics=mqtt")
    assert s.path == "shop" and s.options.topics == "mqtt"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://h", "unknown URL scheme 'kafka'"),
        ("localhost:5672", "has no scheme"),
        ("amqp://", "empty host"),
        ("amqp://h:0", "port 0 .* out of range"),
        ("amqp://h:99999", "port 99999 .* out of range"),
        ("amqp://h:abc", "port 'abc' .* is not a number"),
        ("amqp://h:", "empty port"),
        ("amqp://h?colour=blue", "unknown query parameter 'colour'"),
        ("amqp://h?heartbeat=soon", "option 'heartbeat' must be a float, got 'soon'"),
        ("amqp://h?on_mismatch=ignore", "must be one of 'error', 'recreate'"),
        ("amqp://h?timeout=0", "timeout must be > 0"),
        ("mqtt://h?protocol=3", "must be one of '4', '5'"),
        ("mqtt://h/path", "take no path"),
        ("amqp://h?a=1&a=2", "given twice"),
        ("amqp://h?ca_file=/x", "use amqps://"),
        ("memory://x/y", "take no path"),
        ("amqp://h#frag", "fragment"),
        ("amqp://[::1", "unclosed"),
    ],
)
def test_bad_urls_name_the_bad_part(url: str, message: str) -> None:
    with pytest.raises(aiobus.ConfigError, match=message):
        parse(url)


def test_keyword_options_are_checked() -> None:
    with pytest.raises(aiobus.ConfigError, match="unknown option 'prefech'"):
        parse("amqp://h", prefech=10)
    with pytest.raises(aiobus.ConfigError, match="option 'prefetch' must be int"):
        parse("amqp://h", prefetch="10")
    with pytest.raises(aiobus.ConfigError, match="must be an int, got a bool"):
        parse("amqp://h", prefetch=True)
    with pytest.raises(aiobus.ConfigError, match="credentials must be"):
        parse("amqp://h", credentials="user:pass")
    assert parse("amqp://h", timeout=5).options.timeout == 5


def test_password_never_shown() -> None:
    s = parse("amqp://admin:s3cret@h/v")
    for text in (str(s), repr(s), repr(s.credentials), s.redacted_url()):
        assert "s3cret" not in text
    assert s.redacted_url() == "amqp://admin:***@h:5672/v"
    with pytest.raises(aiobus.ConfigError) as err:
        parse("amqp://admin:s3cret@h?nope=1")
    assert "s3cret" not in str(err.value)
    with pytest.raises(aiobus.ConfigError) as err:
        parse("kafka://admin:s3cret@h")
    assert "s3cret" not in str(err.value)
    assert "kafka://admin:***@h" in str(err.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # A raw '@' in the password: the last '@' of the authority ends the user info.
        ("amqp://u:Pw1@Pw2@h:x", "amqp://u:***@h:x"),
        ("kafka://u:Pw1@Pw2@h", "kafka://u:***@h"),
        # A raw '/', '?' or '#' cuts the password; nothing before the stray '@' is shown.
        ("amqp://u:Pw1/Pw2@h:5672", "amqp://***@h:5672"),
        ("amqp://u:Pw1?Pw2@h", "amqp://***@h"),
        ("amqp://u:Pw1#Pw2@h", "amqp://***@h"),
        ("amqp://u:1234/Pw2@h/v", "amqp://***@h/v"),
        # No scheme to cut at: the user info is dropped whole.
        ("u:Pw1/Pw2@h", "***@h"),
        ("u:Pw1@Pw2://h@x", "***@x"),
    ],
)
def test_errors_for_broken_urls_show_parsed_parts_without_the_password(
    url: str, shown: str
) -> None:
    with pytest.raises(aiobus.ConfigError) as err:
        parse(url)
    text = str(err.value)
    assert repr(shown) in text
    assert "Pw1" not in text and "Pw2" not in text and "1234" not in text


def test_a_raw_at_after_the_host_says_to_percent_encode() -> None:
    with pytest.raises(aiobus.ConfigError, match="percent-encode"):
        parse("mqtt://h?client_id=GID@@@dev")
    assert parse("mqtt://h?client_id=GID%40%40%40dev").options.client_id == "GID@@@dev"  # type: ignore[attr-defined]


@pytest.mark.parametrize("spelling", ["false", "False", "0", "no", "OFF", "", "none", "maybe"])
def test_verify_off_in_a_url_is_refused(spelling: str) -> None:
    with pytest.raises(aiobus.ConfigError, match="keyword-only decision") as err:
        parse(f"amqps://u:s3cret@h/?verify={spelling}")
    assert "verify=False" in str(err.value) and "s3cret" not in str(err.value)


def test_verify_off_as_a_keyword_still_works() -> None:
    assert parse("amqps://h", verify=False).options.verify is False
    assert parse("amqps://h?verify=true").options.verify is True
    with pytest.raises(aiobus.ConfigError, match="plain-text scheme amqp://; use amqps://"):
        parse("amqp://h", verify=False)


hosts = st.text(alphabet=string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=20)
ports = st.integers(min_value=1, max_value=65535)
words = st.text(alphabet=string.ascii_letters + string.digits + "@:/%?#& ", max_size=12)


@given(
    scheme=st.sampled_from(["amqp", "amqps", "mqtt", "mqtts", "amqp1", "amqp1s"]),
    endpoints=st.lists(st.tuples(hosts, ports), min_size=1, max_size=4),
    user=words,
    password=words,
    vhost=words,
)
def test_round_trip_of_generated_urls(
    scheme: str, endpoints: list[tuple[str, int]], user: str, password: str, vhost: str
) -> None:
    from urllib.parse import quote

    netloc = ",".join(f"{h}:{p}" for h, p in endpoints)
    path = "/" + quote(vhost, safe="") if scheme.startswith("amqp") and "1" not in scheme else ""
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{netloc}{path}"
    s = parse(url)
    assert s.endpoints == tuple(Endpoint(h, p) for h, p in endpoints)
    assert s.credentials == aiobus.Credentials(user, password)
    if path:
        assert s.path == (vhost or "/")
    if password:
        assert quote(password, safe="") not in s.redacted_url().split("@")[0].split(":", 2)[-1]
    assert parse(s.redacted_url()).endpoints == s.endpoints


@given(st.integers().filter(lambda p: not 1 <= p <= 65535))
def test_out_of_range_ports_are_rejected(port: int) -> None:
    with pytest.raises(aiobus.ConfigError):
        parse(f"amqp://h:{port}")


@given(st.text(max_size=40))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    with contextlib.suppress(aiobus.ConfigError):
        parse(text)


def test_an_unknown_scheme_does_not_show_a_bare_user_that_may_be_a_password() -> None:
    # Found by the secrets property test: an unencoded password "//Pw00" after "a:" reads as
    # the user name of "a://Pw00@h".
    with pytest.raises(aiobus.ConfigError, match="unknown URL scheme") as info:
        parse("a://Pw00@h")
    assert "Pw00" not in str(info.value)
