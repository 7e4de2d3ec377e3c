"""Topic validation, matching and MQTT <-> AMQP translation (aiobus.topics)."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobus.errors import ConfigError, InvalidTopic
from aiobus.topics import (
    AMQP_MAX_BYTES,
    MQTT_MAX_BYTES,
    TopicMatcher,
    amqp_to_mqtt,
    is_wildcard,
    mqtt_to_amqp,
    validate_binding_pattern,
    validate_mqtt_filter,
    validate_mqtt_topic,
    validate_routing_key,
)

# --- MQTT topic names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "a/b/c",
        "a//b",
        "/a",
        "a/",
        "/",
        "//",
        "$SYS/broker/load",
        "é/€/😀",
        "a.b/c*d",
        "a\u00a0b",
        "a" * MQTT_MAX_BYTES,
        "é" * (MQTT_MAX_BYTES // 2) + "a",
        "😀" * (MQTT_MAX_BYTES // 4) + "abc",
    ],
)
def test_mqtt_topic_accepts(topic: str) -> None:
    assert validate_mqtt_topic(topic) is topic


@pytest.mark.parametrize(
    ("topic", "rule"),
    [
        ("", r"MQTT topic name is empty \(it must be at least one character long\)"),
        ("a/#", r"contains the wildcard '#' \(wildcards are only allowed in subscription"),
        ("a+b", r"contains the wildcard '\+'"),
        ("#/+", r"contains the wildcard '#'"),
        ("a\x00b", r"contains the null character U\+0000"),
        ("a\nb", r"contains the control character U\+000A .*Mosquitto drop the connection"),
        ("\x1f", r"control character U\+001F"),
        ("a\x7f", r"control character U\+007F"),
        ("a\x9f", r"control character U\+009F"),
        ("a\ufdd0", r"noncharacter U\+FDD0"),
        ("a\uffff", r"noncharacter U\+FFFF"),
        ("a\U0010fffe", r"noncharacter U\+10FFFE"),
        ("a\ud800", r"lone surrogate U\+D800, so it is not valid UTF-8"),
        ("a" * (MQTT_MAX_BYTES + 1), r"is 65,536 bytes in UTF-8, over the MQTT string limit"),
        ("é" * (MQTT_MAX_BYTES // 2 + 1), r"is 65,536 bytes in UTF-8, over .* of 65,535 bytes"),
    ],
)
def test_mqtt_topic_rejects(topic: str, rule: str) -> None:
    with pytest.raises(InvalidTopic, match=rule):
        validate_mqtt_topic(topic)


def test_mqtt_topic_wildcard_message_is_exact() -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_mqtt_topic("a/+/b")
    assert str(info.value) == (
        "MQTT topic name 'a/+/b' contains the wildcard '+' "
        "(wildcards are only allowed in subscription filters)"
    )


def test_invalid_topic_is_a_config_and_value_error() -> None:
    with pytest.raises(ConfigError):
        validate_mqtt_topic("")
    with pytest.raises(ValueError, match="empty"):
        validate_mqtt_topic("")


def test_long_values_are_truncated_in_messages() -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_mqtt_topic("x" * 100_000)
    message = str(info.value)
    assert len(message) < 250
    assert "(100,000 characters)" in message
    assert "100,000 bytes" in message


def test_non_str_is_refused_with_invalid_topic() -> None:
    with pytest.raises(InvalidTopic, match="must be a str, got bytes"):
        validate_mqtt_topic(b"a/b")  # type: ignore[arg-type]
    with pytest.raises(InvalidTopic, match="must be a str, got NoneType"):
        validate_routing_key(None)  # type: ignore[arg-type]


# --- MQTT topic filters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "a/b",
        "#",
        "+",
        "a/#",
        "a/+/c",
        "+/+",
        "/#",
        "+/",
        "a//+",
        "+/b/#",
        "$SYS/#",
        "$share/group/a/+",
        "$share/g/#",
        "$share/g/$SYS/#",
        "$share",
        "$sharex/a/+",
        "a.b/*",
    ],
)
def test_mqtt_filter_accepts(pattern: str) -> None:
    assert validate_mqtt_filter(pattern) is pattern


@pytest.mark.parametrize(
    ("pattern", "rule"),
    [
        ("", r"MQTT topic filter is empty"),
        ("a/#/b", r"has '#' before the last level \('#' must be the last level"),
        ("#/#", r"'#' before the last level"),
        ("a#", r"has '#' inside the level 'a#' \(the wildcard '#' must occupy a whole level"),
        ("a/#b", r"'#' inside the level '#b'"),
        ("a/b+", r"has '\+' inside the level 'b\+' \(the wildcard '\+' must occupy a whole"),
        ("++", r"'\+' inside the level '\+\+'"),
        ("$share/", r"shared subscription with an empty share name"),
        ("$share//a", r"shared subscription with an empty share name"),
        ("$share/g", r"shared subscription with no topic filter after the share name"),
        ("$share/g/", r"no topic filter after the share name"),
        ("$share/g+/a", r"share name 'g\+' containing '\+' \(a share name must not contain"),
        ("$share/#/a", r"share name '#' containing '#'"),
        ("$share/g/a#", r"'#' inside the level 'a#'"),
        ("$share/g/#/a", r"'#' before the last level"),
        ("a/\x00", r"null character U\+0000"),
        ("a/\t/+", r"control character U\+0009"),
        ("+/" + "a" * MQTT_MAX_BYTES, r"is 65,537 bytes in UTF-8"),
    ],
)
def test_mqtt_filter_rejects(pattern: str, rule: str) -> None:
    with pytest.raises(InvalidTopic, match=rule):
        validate_mqtt_filter(pattern)


# --- AMQP routing keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "a", "a.b.c", "a..b", ".", "a.", "a/b", "a+b", "é.😀", "a\nb", "a" * 255, "é" * 127],
)
def test_routing_key_accepts(key: str) -> None:
    assert validate_routing_key(key) is key


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("a.*", r"'\*' is a binding wildcard; routing keys used for publishing cannot contain"),
        ("a.#", r"'#' is a binding wildcard; routing keys used for publishing cannot contain"),
        ("a*b", r"contains '\*'"),
        ("a\x00", r"null character U\+0000"),
        ("\udfff", r"lone surrogate U\+DFFF"),
        ("a" * 256, r"is 256 bytes in UTF-8, over the AMQP 0-9-1 shortstr limit of 255 bytes"),
        ("é" * 128, r"is 256 bytes in UTF-8"),
    ],
)
def test_routing_key_rejects(key: str, rule: str) -> None:
    with pytest.raises(InvalidTopic, match=rule):
        validate_routing_key(key)


def test_routing_key_wildcard_message_is_exact() -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_routing_key("orders.*")
    assert str(info.value) == (
        "AMQP routing key 'orders.*' contains '*': '*' is a binding wildcard; "
        "routing keys used for publishing cannot contain it"
    )


# --- AMQP binding patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    ["", "#", "*", "a.*.b", "#.a", "a.#.b", "#.#", "*.*", "a..b", ".", "a+b/c", "a" * 255],
)
def test_binding_pattern_accepts(pattern: str) -> None:
    assert validate_binding_pattern(pattern) is pattern


@pytest.mark.parametrize(
    ("pattern", "rule"),
    [
        ("a*.b", r"has '\*' inside the word 'a\*' \(the wildcard '\*' must be a whole word"),
        ("a.b#", r"has '#' inside the word 'b#'"),
        ("#a", r"'#' inside the word '#a'"),
        ("**", r"'\*' inside the word '\*\*'"),
        ("a.\x00", r"null character U\+0000"),
        ("a" * 256, r"256 bytes in UTF-8, over the AMQP 0-9-1 shortstr limit"),
    ],
)
def test_binding_pattern_rejects(pattern: str, rule: str) -> None:
    with pytest.raises(InvalidTopic, match=rule):
        validate_binding_pattern(pattern)


# --- translation -----------------------------------------------------------------------------

TRANSLATIONS = [
    ("a/b/c", "a.b.c"),
    ("a/+/#", "a.*.#"),
    ("#", "#"),
    ("+", "*"),
    ("+/+", "*.*"),
    ("a//b", "a..b"),
    ("/a", ".a"),
    ("/", "."),
    ("$SYS/x", "$SYS.x"),
    ("$share", "$share"),
    ("é-x_y/😀", "é-x_y.😀"),
]


@pytest.mark.parametrize(("mqtt", "amqp"), TRANSLATIONS)
def test_translation_examples(mqtt: str, amqp: str) -> None:
    assert mqtt_to_amqp(mqtt) == amqp
    assert amqp_to_mqtt(amqp) == mqtt


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("a.b/c", r"cannot translate MQTT 'a.b/c' to AMQP: '\.' inside a level .*'a\.b\.c'"),
        ("a/*", r"literal '\*' would become the AMQP one-word wildcard"),
        ("$share/g/a/+", r"'\$share/' marks an MQTT shared subscription"),
        ("a" * 256, r"256 bytes in UTF-8, over the AMQP 0-9-1 shortstr limit of 255"),
        ("a/#/b", r"MQTT topic filter 'a/#/b' has '#' before the last level"),
        ("", r"MQTT topic filter is empty"),
        ("a/\n", r"control character U\+000A"),
    ],
)
def test_mqtt_to_amqp_rejects(value: str, rule: str) -> None:
    with pytest.raises(InvalidTopic, match=rule):
        mqtt_to_amqp(value)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", r"the empty routing key has no MQTT equivalent"),
        ("#.a", r"'#' is only allowed as the last MQTT level"),
        ("a.#.b", r"'#' is only allowed as the last MQTT level"),
        ("a/b", r"'/' inside a word would become an MQTT level separator"),
        ("a+b", r"literal '\+' is not allowed in MQTT topics"),
        ("a*.b", r"has '\*' inside the word 'a\*' \(the wildcard '\*' must be a whole word"),
        ("$share.g.a", r"would start with '\$share/', which MQTT reads as a shared subscription"),
        ("a.\n", r"cannot translate AMQP 'a\.\\n' to MQTT: .*control character U\+000A"),
        ("a.\x00", r"null character U\+0000"),
    ],
)
def test_amqp_to_mqtt_rejects(value: str, rule: str) -> None:
    with pytest.raises(InvalidTopic, match=rule):
        amqp_to_mqtt(value)


# --- matching tables -------------------------------------------------------------------------

MQTT_TABLE = [
    # exact
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a/b", "a", False),
    # '+' is exactly one level, which may be empty
    ("a/+", "a/b", True),
    ("a/+", "a/", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("+", "a", True),
    ("+", "/", False),
    ("+/+", "/", True),
    ("/+", "/a", True),
    ("+/b", "/b", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/c", False),
    # '#' is zero or more trailing levels, the parent included
    ("a/#", "a", True),
    ("a/#", "a/", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("#", "a", True),
    ("#", "/", True),
    ("#", "a/b/c", True),
    ("/#", "/", True),
    ("/#", "a/b", False),
    ("a/+/#", "a/b", True),
    ("a/+/#", "a/b/c/d", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b/", True),
    ("a/+/#", "a//", True),
    ("+/b/#", "a/b", True),
    ("+/b/#", "a/c/b", False),
    # MQTT 5 §4.7.2: wildcard-first filters do not match '$' topics
    ("#", "$SYS/x", False),
    ("#", "$SYS", False),
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS", True),
    ("$SYS/#", "$SYS/x/y", True),
    ("$SYS/+", "$SYS/x", True),
    ("a/#", "a/$x", True),
    ("+/$x", "a/$x", True),
    # shared subscriptions match through their inner filter
    ("$share/g/a/+", "a/b", True),
    ("$share/g/a/b", "a/b", True),
    ("$share/g/a/b", "$share/g/a/b", False),
    ("$share/g/#", "x/y", True),
    ("$share/g/#", "$SYS/x", False),
    # regex metacharacters are literal
    ("a.b/+", "a.b/c", True),
    ("a.b/+", "aXb/c", False),
    ("(x)/+/[y]", "(x)/z/[y]", True),
    ("a*/#", "a*", True),
    ("a*/#", "aa", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MQTT_TABLE)
def test_mqtt_matching(pattern: str, topic: str, expected: bool) -> None:
    assert TopicMatcher(pattern, "mqtt").matches(topic) is expected


AMQP_TABLE = [
    ("a.b", "a.b", True),
    ("a.b", "a.b.c", False),
    # '*' is exactly one word; the empty key has no words, "." has two empty ones
    ("*", "a", True),
    ("*", "", False),
    ("*", ".", False),
    ("*", "a.b", False),
    ("*.*", ".", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a..c", True),
    ("a.*.c", "a.c", False),
    # '#' is zero or more words, anywhere
    ("#", "", True),
    ("#", ".", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.", True),
    ("a.#", "a.b.c", True),
    ("a.#", "ab", False),
    ("a.#", "", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "xa", False),
    ("#.a", "a.x", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x", False),
    ("#.#", "", True),
    ("#.#", "a", True),
    ("#.#", "a.b", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("#.*", "a.b", True),
    ("*.#", "", False),
    ("*.#", "a.b", True),
    ("#.*.#", "a", True),
    ("#.*.#", "", False),
    ("a.#.#.b", "a.b", True),
    # empty patterns and empty words
    ("", "", True),
    ("", "a", False),
    (".", ".", True),
    (".", "", False),
    (".#", "", False),
    (".#", ".", True),
    (".#", ".a", True),
    ("a..#", "a.", True),
    ("a..#", "a..x", True),
    ("a..#", "a", False),
    # no '$' rule in AMQP
    ("#", "$SYS.x", True),
    ("*.x", "$SYS.x", True),
    # regex metacharacters are literal
    ("a+b.*", "a+b.c", True),
    ("a+b.*", "aab.c", False),
    ("a[1].#", "a[1]", True),
    ("$.*", "$.x", True),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), AMQP_TABLE)
def test_amqp_matching(pattern: str, key: str, expected: bool) -> None:
    assert TopicMatcher(pattern, "amqp").matches(key) is expected


def test_matcher_validates_pattern_and_syntax() -> None:
    with pytest.raises(InvalidTopic, match="'#' before the last level"):
        TopicMatcher("a/#/b", "mqtt")
    with pytest.raises(InvalidTopic, match="must be a whole word"):
        TopicMatcher("a*", "amqp")
    with pytest.raises(ValueError, match="syntax must be 'mqtt' or 'amqp'"):
        TopicMatcher("a", "stomp")  # type: ignore[arg-type]


def test_matcher_attributes() -> None:
    m = TopicMatcher("$share/workers/jobs/+", "mqtt")
    assert (m.pattern, m.syntax, m.share_group) == ("$share/workers/jobs/+", "mqtt", "workers")
    assert TopicMatcher("jobs/+", "mqtt").share_group is None
    assert repr(TopicMatcher("a.*", "amqp")) == "TopicMatcher('a.*', 'amqp')"


@pytest.mark.parametrize(
    ("pattern", "syntax", "expected"),
    [
        ("a/b", "mqtt", False),
        ("a/+", "mqtt", True),
        ("#", "mqtt", True),
        ("a+b", "mqtt", False),
        ("a.*", "mqtt", False),
        ("$share/g/a", "mqtt", True),
        ("a.*", "amqp", True),
        ("#", "amqp", True),
        ("a*b", "amqp", False),
        ("a/+", "amqp", False),
        ("", "amqp", False),
    ],
)
def test_is_wildcard(pattern: str, syntax: str, expected: bool) -> None:
    assert is_wildcard(pattern, syntax) is expected  # type: ignore[arg-type]


def test_is_wildcard_rejects_unknown_syntax() -> None:
    with pytest.raises(ValueError, match="syntax must be"):
        is_wildcard("a", "stomp")  # type: ignore[arg-type]


# --- property tests --------------------------------------------------------------------------

# Level/word text that both syntaxes carry unchanged: no separator or wildcard of either, and
# only characters an MQTT broker accepts (no controls, surrogates or noncharacters: Cc/Cs/Cn).
_plain_char = st.one_of(
    st.sampled_from("ab$-_ "),
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn"), exclude_characters="/.+*#"),
)
_plain_text = st.text(_plain_char, max_size=4)


def _joined(sep: str, parts: list[str]) -> str:
    return sep.join(parts)


mqtt_topics = (
    st.lists(_plain_text, min_size=1, max_size=5).map(functools.partial(_joined, "/")).filter(bool)
)


@st.composite
def mqtt_filters(draw: st.DrawFn, level: st.SearchStrategy[str] = _plain_text) -> str:
    levels = draw(st.lists(st.one_of(level, st.just("+")), max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    result = "/".join(levels)
    if not result:
        return "#"
    return result


amqp_keys = (
    st.lists(_plain_text, min_size=1, max_size=5).map(functools.partial(_joined, ".")).filter(bool)
)


@st.composite
def amqp_translatable_patterns(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.one_of(_plain_text, st.just("*")), max_size=5))
    if draw(st.booleans()):
        words.append("#")
    return ".".join(words) or "#"


def _not_share(value: str) -> bool:
    return not value.startswith(("$share/", "$share."))


@given(st.one_of(mqtt_topics, mqtt_filters()).filter(_not_share))
def test_mqtt_round_trip(value: str) -> None:
    amqp = mqtt_to_amqp(value)
    assert amqp_to_mqtt(amqp) == value
    assert validate_binding_pattern(amqp) == amqp
    if not is_wildcard(value, "mqtt"):
        # A topic name becomes a publishable routing key.
        assert validate_routing_key(amqp) == amqp


@given(st.one_of(amqp_keys, amqp_translatable_patterns()).filter(_not_share))
def test_amqp_round_trip(value: str) -> None:
    mqtt = amqp_to_mqtt(value)
    assert mqtt_to_amqp(mqtt) == value
    if is_wildcard(value, "amqp"):
        assert validate_mqtt_filter(mqtt) == mqtt
    else:
        assert validate_mqtt_topic(mqtt) == mqtt


# Small alphabets so that matches are frequent; "" levels/words and a '$' first level included.
_levels = st.sampled_from(["a", "b", "", "$x"])
_small_topics = st.lists(_levels, min_size=1, max_size=4).map(functools.partial(_joined, "/"))


@st.composite
def mqtt_filter_topic_pairs(draw: st.DrawFn) -> tuple[str, str]:
    topic = draw(_small_topics.filter(bool))
    if draw(st.booleans()):
        # A filter derived from the topic: some levels become '+', a tail may become '#'.
        levels = topic.split("/")
        levels = [draw(st.sampled_from([lvl, "+"])) for lvl in levels]
        cut = draw(st.integers(0, len(levels)))
        if cut < len(levels) or draw(st.booleans()):
            levels = [*levels[:cut], "#"]
        return "/".join(levels), topic
    return draw(mqtt_filters(_levels)), topic


def _dollar_rule_applies(mqtt_filter: str, topic: str) -> bool:
    return topic.startswith("$") and mqtt_filter.split("/")[0] in ("+", "#")


@settings(max_examples=200)
@given(mqtt_filter_topic_pairs())
def test_translation_preserves_matching(pair: tuple[str, str]) -> None:
    # Empty levels need no constraint: RabbitMQ splits "a..b" into three words, one empty, just
    # as MQTT splits "a//b", and '*' / '+' both match an empty word / level. The only empty-word
    # case without an MQTT twin is the empty AMQP key (zero words), and MQTT topics are never
    # empty, so it cannot arise from a translated topic. The one real difference is MQTT's '$'
    # rule, which only removes MQTT matches: so "MQTT match => AMQP match" always holds, and
    # equality holds whenever the '$' rule does not apply.
    mqtt_filter, topic = pair
    in_mqtt = TopicMatcher(mqtt_filter, "mqtt").matches(topic)
    in_amqp = TopicMatcher(mqtt_to_amqp(mqtt_filter), "amqp").matches(mqtt_to_amqp(topic))
    if in_mqtt:
        assert in_amqp
    if not _dollar_rule_applies(mqtt_filter, topic):
        assert in_mqtt == in_amqp


def _reference_mqtt(mqtt_filter: str, topic: str) -> bool:
    if mqtt_filter.startswith("$share/"):
        mqtt_filter = mqtt_filter.split("/", 2)[2]
    if _dollar_rule_applies(mqtt_filter, topic):
        return False
    pattern, levels = mqtt_filter.split("/"), topic.split("/")
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= len(levels) or (p != "+" and p != levels[i]):
            return False
    return len(levels) == len(pattern)


def _reference_amqp(pattern: str, key: str) -> bool:
    # RabbitMQ's rabbit_db_topic_exchange: the empty key has no words at all.
    pw = pattern.split(".") if pattern else []
    kw = key.split(".") if key else []

    @functools.cache
    def walk(i: int, j: int) -> bool:
        if i == len(pw):
            return j == len(kw)
        if pw[i] == "#":
            return walk(i + 1, j) or (j < len(kw) and walk(i, j + 1))
        return j < len(kw) and pw[i] in ("*", kw[j]) and walk(i + 1, j + 1)

    return walk(0, 0)


@settings(max_examples=200)
@given(
    st.one_of(
        mqtt_filters(_levels),
        mqtt_filters(_levels).map("$share/g/".__add__),
    ),
    _small_topics.filter(bool),
)
def test_mqtt_matcher_agrees_with_reference(mqtt_filter: str, topic: str) -> None:
    assert TopicMatcher(mqtt_filter, "mqtt").matches(topic) == _reference_mqtt(mqtt_filter, topic)


_words = st.sampled_from(["a", "b", ""])


@settings(max_examples=200)
@given(
    st.lists(st.one_of(_words, st.sampled_from(["*", "#"])), max_size=5).map(".".join),
    st.lists(_words, max_size=5).map(".".join),
)
def test_amqp_matcher_agrees_with_reference(pattern: str, key: str) -> None:
    assert TopicMatcher(pattern, "amqp").matches(key) == _reference_amqp(pattern, key)


_VALIDATORS: list[Callable[[str], object]] = [
    validate_mqtt_topic,
    validate_mqtt_filter,
    validate_routing_key,
    validate_binding_pattern,
    mqtt_to_amqp,
    amqp_to_mqtt,
    functools.partial(TopicMatcher, syntax="mqtt"),
    functools.partial(TopicMatcher, syntax="amqp"),
]

_any_text = st.one_of(st.text(), st.text(st.sampled_from("a/.+*#$\x00\n\ufffe"), max_size=12))


@settings(max_examples=200)
@given(_any_text)
def test_validators_raise_only_invalid_topic(value: str) -> None:
    for validate in _VALIDATORS:
        with contextlib.suppress(InvalidTopic):
            validate(value)
    is_wildcard(value, "mqtt")
    is_wildcard(value, "amqp")


@given(_any_text)
def test_accepted_values_keep_the_rules(value: str) -> None:
    try:
        validate_mqtt_topic(value)
    except InvalidTopic:
        pass
    else:
        assert value
        assert "\x00" not in value
        assert not re.search(r"[+#]", value)
        assert len(value.encode()) <= MQTT_MAX_BYTES
    try:
        validate_routing_key(value)
    except InvalidTopic:
        pass
    else:
        assert "\x00" not in value
        assert not re.search(r"[*#]", value)
        assert len(value.encode()) <= AMQP_MAX_BYTES


@given(st.text(min_size=AMQP_MAX_BYTES + 1))
def test_over_length_routing_keys_are_rejected(value: str) -> None:
    for validate in (validate_routing_key, validate_binding_pattern):
        with pytest.raises(InvalidTopic, match=r"bytes in UTF-8, over the AMQP 0-9-1 shortstr"):
            validate(value)


@given(st.text(min_size=1, max_size=20))
def test_over_length_by_bytes_not_characters(word: str) -> None:
    # Repeat a short text past 255 UTF-8 bytes; with multi-byte text that is < 256 characters.
    value = word * (AMQP_MAX_BYTES // len(word.encode()) + 1)
    assert len(value.encode()) > AMQP_MAX_BYTES
    with pytest.raises(InvalidTopic, match=r"over the AMQP 0-9-1 shortstr limit of 255 bytes"):
        validate_binding_pattern(value)


@given(st.sampled_from(["a", "é", "€", "😀"]), st.integers(0, 3))
def test_over_length_mqtt_is_rejected(char: str, extra: int) -> None:
    value = char * (MQTT_MAX_BYTES // len(char.encode()) + 1) + "a" * extra
    assert len(value.encode()) > MQTT_MAX_BYTES
    for validate in (validate_mqtt_topic, validate_mqtt_filter):
        with pytest.raises(InvalidTopic, match=r"bytes in UTF-8, over the MQTT string limit"):
            validate(value)
