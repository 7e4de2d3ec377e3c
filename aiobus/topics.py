"""Topic names, filters, routing keys and binding patterns: validation, matching, translation.

Pure logic, no I/O. Two syntaxes:

* ``"mqtt"``: levels separated by ``/``; in filters ``+`` is one level and ``#`` (last level
  only) is zero or more levels. Empty levels are real levels (``a//b`` has three).
* ``"amqp"``: AMQP 0-9-1 topic exchange; words separated by ``.``; in binding patterns ``*``
  is one word and ``#`` (anywhere) is zero or more words. As in RabbitMQ, the empty key has
  no words at all, any other key has ``key.count(".") + 1`` words (empty words included).

Translation follows RabbitMQ's MQTT plugin (``/`` <-> ``.``, ``+`` <-> ``*``, ``#`` <-> ``#``)
and refuses the inputs on which the plugin's mapping is lossy; see ``mqtt_to_amqp``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal

from aiobus.errors import InvalidTopic

__all__ = [
    "AMQP_MAX_BYTES",
    "MQTT_MAX_BYTES",
    "Syntax",
    "TopicMatcher",
    "amqp_to_mqtt",
    "is_wildcard",
    "mqtt_to_amqp",
    "validate_binding_pattern",
    "validate_mqtt_filter",
    "validate_mqtt_topic",
    "validate_routing_key",
]

Syntax = Literal["mqtt", "amqp"]

#: An MQTT UTF-8 string carries a two-byte length prefix.
MQTT_MAX_BYTES: Final = 65_535
#: AMQP 0-9-1 routing keys are ``shortstr``: a one-byte length prefix.
AMQP_MAX_BYTES: Final = 255

_SHARE_PREFIX: Final = "$share/"

# MQTT 3.1.1 §1.5.3 / 5.0 §1.5.4: NUL and surrogates are forbidden outright; control characters
# and noncharacters are "SHOULD NOT", and a receiver may treat them as a malformed packet.
# Mosquitto 2 does: it closes the connection, and a publish that is retried after every
# reconnect would then loop forever. So they are refused here, before anything is sent.
_NONCHARACTERS: Final = r"\ufdd0-\ufdef" + "".join(
    f"\\U{plane << 16 | 0xFFFE:08x}\\U{plane << 16 | 0xFFFF:08x}" for plane in range(17)
)
_MQTT_BAD_CHAR: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff" + _NONCHARACTERS + "]")
# AMQP routing keys are opaque bytes to the broker; only NUL and unencodable text are refused.
_AMQP_BAD_CHAR: Final = re.compile(r"[\x00\ud800-\udfff]")

_MQTT_TO_AMQP: Final = str.maketrans("/+", ".*")
_AMQP_TO_MQTT: Final = str.maketrans(".*", "/+")


# --- helpers ---------------------------------------------------------------------------------


def _show(value: str) -> str:
    # Error messages name the offending value, but a 64 KiB topic must not flood a log line.
    if len(value) <= 80:
        return repr(value)
    return f"{value[:60]!r}... ({len(value):,} characters)"


def _utf8_len(value: str) -> int:
    # surrogatepass so that an over-long string with a lone surrogate is measured, not crashed on.
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidTopic(f"{what} must be a str, got {type(value).__name__}")
    return value


def _check_length(value: str, what: str, limit: int, limit_name: str) -> None:
    # len(value) <= limit // 4 needs no encoding: no code point takes more than 4 bytes.
    if len(value) <= limit // 4:
        return
    size = _utf8_len(value)
    if size > limit:
        raise InvalidTopic(
            f"{what} {_show(value)} is {size:,} bytes in UTF-8, "
            f"over the {limit_name} limit of {limit:,} bytes"
        )


def _char_problem(char: str) -> str:
    code = ord(char)
    if code == 0:
        return "contains the null character U+0000 (not allowed)"
    if 0xD800 <= code <= 0xDFFF:
        return f"contains the lone surrogate U+{code:04X}, so it is not valid UTF-8"
    if code <= 0x9F:
        return (
            f"contains the control character U+{code:04X} (MQTT strings must not carry "
            "U+0001-U+001F or U+007F-U+009F: brokers such as Mosquitto drop the connection)"
        )
    return (
        f"contains the Unicode noncharacter U+{code:04X} (MQTT strings must not carry "
        "noncharacters: brokers such as Mosquitto drop the connection)"
    )


def _check_mqtt_string(value: object, what: str) -> str:
    text = _check_str(value, what)
    if not text:
        raise InvalidTopic(f"{what} is empty (it must be at least one character long)")
    _check_length(text, what, MQTT_MAX_BYTES, "MQTT string")
    bad = _MQTT_BAD_CHAR.search(text)
    if bad is not None:
        raise InvalidTopic(f"{what} {_show(text)} {_char_problem(bad.group())}")
    return text


def _check_amqp_string(value: object, what: str) -> str:
    text = _check_str(value, what)
    _check_length(text, what, AMQP_MAX_BYTES, "AMQP 0-9-1 shortstr")
    bad = _AMQP_BAD_CHAR.search(text)
    if bad is not None:
        raise InvalidTopic(f"{what} {_show(text)} {_char_problem(bad.group())}")
    return text


def _first_of(text: str, chars: str) -> str | None:
    found = [(text.index(c), c) for c in chars if c in text]
    return min(found)[1] if found else None


def _check_mqtt_levels(filt: str, whole: str, what: str) -> None:
    if "+" not in filt and "#" not in filt:
        return
    levels = filt.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level in ("+", "#"):
            if level == "#" and i != last:
                raise InvalidTopic(
                    f"{what} {_show(whole)} has '#' before the last level "
                    "('#' must be the last level, e.g. 'a/b/#')"
                )
            continue
        wildcard = _first_of(level, "+#")
        if wildcard is not None:
            raise InvalidTopic(
                f"{what} {_show(whole)} has {wildcard!r} inside the level {level!r} "
                f"(the wildcard {wildcard!r} must occupy a whole level, e.g. 'a/{wildcard}')"
            )


def _split_share(pattern: str) -> tuple[str | None, str]:
    """``(group, filter)`` of a validated filter; group is None for a plain filter."""
    if pattern.startswith(_SHARE_PREFIX):
        group, _, filt = pattern[len(_SHARE_PREFIX) :].partition("/")
        return group, filt
    return None, pattern


# --- validation ------------------------------------------------------------------------------


def validate_mqtt_topic(topic: str) -> str:
    """Check an MQTT PUBLISH topic name; return it unchanged or raise ``InvalidTopic``."""
    what = "MQTT topic name"
    text = _check_mqtt_string(topic, what)
    wildcard = _first_of(text, "+#")
    if wildcard is not None:
        raise InvalidTopic(
            f"{what} {_show(text)} contains the wildcard {wildcard!r} "
            "(wildcards are only allowed in subscription filters)"
        )
    return text


def validate_mqtt_filter(pattern: str) -> str:
    """Check an MQTT SUBSCRIBE topic filter, ``$share/<group>/<filter>`` included."""
    what = "MQTT topic filter"
    text = _check_mqtt_string(pattern, what)
    if text.startswith(_SHARE_PREFIX):
        group, sep, filt = text[len(_SHARE_PREFIX) :].partition("/")
        if not group:
            raise InvalidTopic(
                f"{what} {_show(text)} is a shared subscription with an empty share name "
                "(the form is '$share/<name>/<filter>', name at least one character)"
            )
        wildcard = _first_of(group, "+#")
        if wildcard is not None:
            raise InvalidTopic(
                f"{what} {_show(text)} has the share name {group!r} containing {wildcard!r} "
                "(a share name must not contain '/', '+' or '#')"
            )
        if not sep or not filt:
            raise InvalidTopic(
                f"{what} {_show(text)} is a shared subscription with no topic filter after "
                "the share name (the form is '$share/<name>/<filter>')"
            )
        _check_mqtt_levels(filt, text, what)
    else:
        _check_mqtt_levels(text, text, what)
    return text


def validate_routing_key(key: str) -> str:
    """Check an AMQP 0-9-1 routing key used for publishing (empty is allowed)."""
    what = "AMQP routing key"
    text = _check_amqp_string(key, what)
    # Legal in AMQP, but on a topic exchange a literal '*' or '#' in a published key only ever
    # matches by accident; refusing it catches a binding pattern passed where a key belongs.
    wildcard = _first_of(text, "*#")
    if wildcard is not None:
        raise InvalidTopic(
            f"{what} {_show(text)} contains {wildcard!r}: {wildcard!r} is a binding wildcard; "
            "routing keys used for publishing cannot contain it"
        )
    return text


def validate_binding_pattern(pattern: str) -> str:
    """Check an AMQP topic-exchange binding key (empty is allowed: it matches the empty key)."""
    what = "AMQP binding pattern"
    text = _check_amqp_string(pattern, what)
    if "*" in text or "#" in text:
        for word in text.split("."):
            if word in ("*", "#"):
                continue
            wildcard = _first_of(word, "*#")
            if wildcard is not None:
                raise InvalidTopic(
                    f"{what} {_show(text)} has {wildcard!r} inside the word {word!r} "
                    f"(the wildcard {wildcard!r} must be a whole word between dots, "
                    f"e.g. 'a.{wildcard}.b')"
                )
    return text


# --- translation -----------------------------------------------------------------------------


def mqtt_to_amqp(value: str) -> str:
    """Translate an MQTT topic name or filter to an AMQP routing key or binding pattern.

    The input is validated as a filter: wildcards are recognised by position, and a filter
    without wildcards is exactly a valid topic name, so names and filters both work and come
    out as routing keys and binding patterns respectively.

    The mapping is RabbitMQ's MQTT plugin's (``/`` -> ``.``, ``+`` -> ``*``), restricted to
    the inputs where that mapping is reversible and keeps the meaning. Refused with
    ``InvalidTopic``: a ``.`` in a level (the plugin keeps it, so it becomes an extra AMQP
    word), a ``*`` (the plugin keeps it, so it becomes a wildcard), a ``$share/`` prefix (no
    AMQP meaning) and results over 255 bytes.
    """
    text = validate_mqtt_filter(value)
    where = f"cannot translate MQTT {_show(text)} to AMQP"
    if text.startswith(_SHARE_PREFIX):
        raise InvalidTopic(
            f"{where}: '$share/' marks an MQTT shared subscription, which has no meaning in "
            "an AMQP binding (bind one shared queue instead)"
        )
    if "." in text:
        raise InvalidTopic(
            f"{where}: '.' inside a level would become an AMQP word separator "
            "(RabbitMQ's MQTT plugin maps 'a.b/c' to 'a.b.c', i.e. three words)"
        )
    if "*" in text:
        raise InvalidTopic(
            f"{where}: a literal '*' would become the AMQP one-word wildcard "
            "(RabbitMQ's MQTT plugin does not escape it)"
        )
    _check_length(text, where + ": the result", AMQP_MAX_BYTES, "AMQP 0-9-1 shortstr")
    return text.translate(_MQTT_TO_AMQP)


def amqp_to_mqtt(value: str) -> str:
    """Translate an AMQP routing key or binding pattern to an MQTT topic name or filter.

    The input is validated as a binding pattern (a key without wildcards is one). Inverse of
    ``mqtt_to_amqp``: refused are the empty key (MQTT topics are never empty), a ``/`` in a
    word, a literal ``+``, a ``#`` that is not the last word (MQTT only has a trailing
    ``#``), a first word ``$share`` (it would read as a shared subscription) and anything
    the result would break MQTT's rules with (control characters, for instance).
    """
    text = validate_binding_pattern(value)
    where = f"cannot translate AMQP {_show(text)} to MQTT"
    if not text:
        raise InvalidTopic(f"{where}: the empty routing key has no MQTT equivalent")
    if "/" in text:
        raise InvalidTopic(
            f"{where}: '/' inside a word would become an MQTT level separator "
            "(RabbitMQ's MQTT plugin does not escape it)"
        )
    if "+" in text:
        raise InvalidTopic(
            f"{where}: a literal '+' is not allowed in MQTT topics outside a whole "
            "'+' wildcard level"
        )
    words = text.split(".")
    if "#" in words[:-1]:
        raise InvalidTopic(
            f"{where}: '#' is only allowed as the last MQTT level, and this '#' is "
            "followed by more words"
        )
    if words[0] == "$share" and len(words) > 1:
        raise InvalidTopic(
            f"{where}: the result would start with '$share/', which MQTT reads as a shared "
            "subscription"
        )
    result = text.translate(_AMQP_TO_MQTT)
    try:
        return validate_mqtt_filter(result)
    except InvalidTopic as exc:
        raise InvalidTopic(f"{where}: {exc}") from exc


# --- matching --------------------------------------------------------------------------------


def is_wildcard(pattern: str, syntax: Syntax) -> bool:
    """Whether ``pattern`` can match topics other than its own text.

    True for patterns with a wildcard level/word, and (MQTT) for ``$share/<group>/...``
    filters, which match their inner filter, not their own text. False means a topic
    matches exactly when it equals ``pattern``. The pattern is not validated.
    """
    if syntax == "mqtt":
        if pattern.startswith(_SHARE_PREFIX):
            return True
        if "+" not in pattern and "#" not in pattern:
            return False
        return any(level in ("+", "#") for level in pattern.split("/"))
    if syntax == "amqp":
        if "*" not in pattern and "#" not in pattern:
            return False
        return any(word in ("*", "#") for word in pattern.split("."))
    raise ValueError(f"syntax must be 'mqtt' or 'amqp', got {syntax!r}")


def _not_dollar(topic: str) -> bool:
    return not topic.startswith("$")


def _always(topic: str) -> bool:
    return True


def _prefix_matcher(prefix: str, sep: str) -> Callable[[str], bool]:
    # 'a/#' and 'a.#' are the commonest wildcard patterns; two string ops beat the regex engine.
    with_sep = prefix + sep

    def match(topic: str) -> bool:
        return topic.startswith(with_sep) or topic == prefix

    return match


def _regex_matcher(regex: str) -> Callable[[str], bool]:
    fullmatch = re.compile(regex, re.DOTALL).fullmatch

    def match(topic: str) -> bool:
        return fullmatch(topic) is not None

    return match


def _compile_mqtt(filt: str) -> Callable[[str], bool]:
    levels = filt.split("/")
    if levels == ["#"]:
        return _not_dollar
    if levels[-1] == "#" and "+" not in levels:
        return _prefix_matcher("/".join(levels[:-1]), "/")
    parts = ["[^/]*" if level == "+" else re.escape(level) for level in levels]
    # A trailing '#' also matches the parent level: 'a/#' matches 'a'.
    regex = "/".join(parts[:-1]) + "(?:/.*)?" if levels[-1] == "#" else "/".join(parts)
    if levels[0] in ("+", "#"):
        # MQTT 5 §4.7.2: a filter starting with a wildcard does not match '$' topics.
        regex = r"(?!\$)" + regex
    return _regex_matcher(regex)


def _compile_amqp(pattern: str) -> Callable[[str], bool]:
    words: list[str] = []
    for word in pattern.split("."):
        # '#.#' matches exactly what '#' matches; collapsing keeps the regex unambiguous.
        if not (word == "#" and words and words[-1] == "#"):
            words.append(word)
    if words == ["#"]:
        return _always
    if words[-1] == "#" and "*" not in words and "#" not in words[:-1]:
        prefix = ".".join(words[:-1])
        # Empty prefix ('.#') would wrongly accept the empty key, which has no first word.
        if prefix:
            return _prefix_matcher(prefix, ".")
    parts: list[str] = []
    sep_pending = False
    for word in words:
        if word == "#":
            # '#' carries the separator on its own side so zero words leave no stray dot.
            parts.append(r"(?:\.[^.]*)*" if sep_pending else r"(?:[^.]*\.)*")
            continue
        if sep_pending:
            parts.append(r"\.")
        parts.append("[^.]*" if word == "*" else re.escape(word))
        sep_pending = True
    # At least one word here is not '#', so the empty key (zero words) can never match, though
    # as a string it would satisfy e.g. '[^.]*'.
    return _regex_matcher(r"(?!\Z)" + "".join(parts))


class TopicMatcher:
    """One pattern, compiled once, matched against many topics.

    ``syntax="mqtt"`` takes a topic filter (``$share/<group>/`` is accepted and stripped;
    ``share_group`` keeps the group), ``syntax="amqp"`` a binding pattern. The pattern is
    validated (``InvalidTopic``); topics given to ``matches`` are not, for speed.
    """

    __slots__ = ("_match", "pattern", "share_group", "syntax")

    _match: Callable[[str], bool]

    def __init__(self, pattern: str, syntax: Syntax) -> None:
        self.pattern = pattern
        self.syntax: Syntax = syntax
        self.share_group: str | None = None
        if syntax == "mqtt":
            validate_mqtt_filter(pattern)
            self.share_group, filt = _split_share(pattern)
            if is_wildcard(filt, "mqtt"):
                self._match = _compile_mqtt(filt)
            else:
                self._match = filt.__eq__
        elif syntax == "amqp":
            validate_binding_pattern(pattern)
            if is_wildcard(pattern, "amqp"):
                self._match = _compile_amqp(pattern)
            else:
                self._match = pattern.__eq__
        else:
            raise ValueError(f"syntax must be 'mqtt' or 'amqp', got {syntax!r}")

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` (a topic name or routing key) matches the pattern."""
        return self._match(topic)

    def __repr__(self) -> str:
        return f"TopicMatcher({self.pattern!r}, {self.syntax!r})"
