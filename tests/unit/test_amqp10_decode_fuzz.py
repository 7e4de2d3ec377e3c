"""Both AMQP 1.0 decoders against proton's own: same Delivery fields, or a clean decode error.

Messages are built and encoded by proton (every AMQP type in application properties,
annotations and amqp-value bodies, nested lists/maps/arrays/described values, timestamps far
out of datetime's range), then decoded by aiobus's fast path and by its proton fallback; the
byte-mutation test flips, truncates and inserts bytes of valid messages. Only the values
``amqp10_codec`` documents may come out, compared with their exact types; only
``UndecodableMessage`` may be raised (the fast path may also say ``_Unknown``: "ask proton").

The seed is printed (``-s`` shows it; a failure shows it too); set ``AIOBUS_FUZZ_SEED`` to
replay a run. ``AIOBUS_FUZZ_EXAMPLES`` changes the number of examples (10,000 by default).
"""

from __future__ import annotations

import math
import os
import random
import struct
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import proton
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from aiobus.errors import ConfigError
from aiobus.settings import Amqp1Options
from aiobus.transports import amqp10_codec as codec

SEED = int(os.environ.get("AIOBUS_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
EXAMPLES = int(os.environ.get("AIOBUS_FUZZ_EXAMPLES") or 10_000)
print(f"test_amqp10_decode_fuzz: AIOBUS_FUZZ_SEED={SEED}", file=sys.stderr)

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # two shared cores: wall-clock per example means nothing here
    print_blob=True,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- what proton may put in a message --------------------------------------------------------

_I64 = (-(2**63), 2**63 - 1)
_text = st.text(max_size=20)
_ascii = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=12)

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2**8 - 1).map(proton.ubyte),
    st.integers(0, 2**16 - 1).map(proton.ushort),
    st.integers(0, 2**32 - 1).map(proton.uint),
    st.integers(0, 2**64 - 1).map(proton.ulong),
    st.integers(-(2**7), 2**7 - 1).map(proton.byte),
    st.integers(-(2**15), 2**15 - 1).map(proton.short),
    st.integers(-(2**31), 2**31 - 1).map(proton.int32),
    st.integers(*_I64),  # long
    st.floats(width=32).map(proton.float32),
    st.floats(),  # double
    st.characters().map(proton.char),
    _text,
    _ascii.map(proton.symbol),
    st.binary(max_size=20),
    st.uuids(),
    # Timestamps anywhere in the 64-bit range: most are outside datetime's years 1-9999.
    st.one_of(st.integers(*_I64), st.just(10**15), st.just(-(10**15))).map(proton.timestamp),
    st.integers(0, 2**32 - 1).map(proton.decimal32),
    st.integers(0, 2**64 - 1).map(proton.decimal64),
    st.binary(min_size=16, max_size=16).map(proton.decimal128),
)

_hashable = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(*_I64),
    _text,
    _ascii.map(proton.symbol),
    st.integers(0, 2**64 - 1).map(proton.ulong),
)

# proton.Array: one element type, undescribed (aiobus's fast path reads those).
_array_types: list[tuple[int, st.SearchStrategy[Any]]] = [
    (proton.Data.INT, st.integers(-(2**31), 2**31 - 1)),
    (proton.Data.LONG, st.integers(*_I64)),
    (proton.Data.STRING, _text),
    (proton.Data.SYMBOL, _ascii),
    (proton.Data.DOUBLE, st.floats()),
    (proton.Data.UINT, st.integers(0, 2**32 - 1)),
    (proton.Data.TIMESTAMP, st.integers(*_I64)),
]


def _array(kind: int, items: st.SearchStrategy[Any]) -> st.SearchStrategy[proton.Array]:
    return st.lists(items, max_size=5).map(lambda xs: proton.Array(proton.UNDESCRIBED, kind, *xs))


arrays = st.one_of(*(_array(kind, items) for kind, items in _array_types))


def _compound(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_hashable, children, max_size=4),
        st.builds(
            proton.Described,
            st.one_of(_ascii.map(proton.symbol), st.integers(0, 2**64 - 1).map(proton.ulong)),
            # proton's decoder misreads a described value inside a described value.
            children.filter(lambda v: not isinstance(v, proton.Described)),
        ),
        arrays,
    )


values = st.recursive(scalars, _compound, max_leaves=12)

_ids = st.one_of(
    st.none(),
    _text,
    st.integers(0, 2**64 - 1).map(proton.ulong),
    st.uuids(),
    st.binary(max_size=16),
)


@st.composite
def messages(draw: st.DrawFn) -> proton.Message:
    m = proton.Message()
    m.id = draw(_ids)
    m.correlation_id = draw(_ids)
    m.address = draw(st.none() | _text)
    m.subject = draw(st.none() | _text)
    m.reply_to = draw(st.none() | _text)
    content_type = draw(st.none() | _ascii)
    if content_type is not None:
        m.content_type = proton.symbol(content_type)
    ms = draw(st.one_of(st.just(0), st.integers(-(2**62), 2**62), st.just(10**15)))
    m.creation_time = ms / 1000
    m.durable = draw(st.booleans())
    m.priority = draw(st.integers(0, 255))
    m.ttl = draw(st.integers(0, 2**32 - 1)) / 1000
    m.first_acquirer = draw(st.booleans())
    m.delivery_count = draw(st.integers(0, 2**32 - 1))
    props = draw(st.dictionaries(_text, values, max_size=4))
    m.properties = props or None
    annotations = draw(st.dictionaries(_ascii.map(proton.symbol), values, max_size=3))
    m.annotations = annotations or None
    kind = draw(st.sampled_from(["data", "value", "sequence", "none"]))
    if kind == "data":
        m.body = draw(st.binary(max_size=300))
        m.inferred = True
    elif kind == "value":
        m.body = draw(values)
        m.inferred = False
    elif kind == "sequence":
        m.body = draw(st.lists(values, max_size=4))
        m.inferred = True
    return m


# --- comparing results with their exact types ------------------------------------------------


def typed(obj: Any) -> Any:
    """``obj`` as nested (type, value) pairs: True is not 1, NaN equals NaN, int is not a
    Timestamp."""
    kind = type(obj).__name__
    if isinstance(obj, float):
        return kind, struct.pack(">d", obj) if not math.isnan(obj) else "nan"
    if isinstance(obj, list):
        return kind, tuple(typed(x) for x in obj)
    if isinstance(obj, dict):
        return kind, tuple((typed(k), typed(v)) for k, v in obj.items())
    if isinstance(obj, datetime):
        return kind, obj.isoformat()
    return kind, obj


Outcome = tuple[str, Any]


def outcome(decoder: Callable[[bytes], dict[str, Any]], data: bytes) -> Outcome:
    """("ok", typed fields), ("undecodable", None) or ("unknown", None); anything else fails."""
    try:
        return "ok", typed(decoder(data))
    except codec.UndecodableMessage:
        return "undecodable", None
    except codec._Unknown:
        return "unknown", None


def check_agree(data: bytes) -> Outcome:
    """The contract: proton's path decides; the fast path agrees or routes to it."""
    slow = outcome(codec.decode_proton, data)
    fast = outcome(codec.decode_fast, data)
    assert slow[0] != "unknown", "only the fast path may route to proton's decoder"
    if fast[0] == "ok":
        assert fast == slow, "the fast path decoded differently from proton's decoder"
    elif fast[0] == "undecodable":
        # Only nesting over MAX_DEPTH, which proton's path refuses as well (the fast path
        # also sees it in fields proton's decoder drops: that is what it may refuse more).
        assert slow[0] == "undecodable" or _deeper_than_limit(data)
    assert outcome(codec.decode, data) == (slow if fast[0] != "undecodable" else fast)
    return slow


def _deeper_than_limit(data: bytes) -> bool:
    try:
        codec.decode_fast(data)
    except codec.UndecodableMessage as exc:
        return "deeper than" in str(exc)
    except codec._Unknown:
        return False
    return False


def depth(obj: Any) -> int:
    """Levels of lists, maps, arrays and described values (a scalar is 0)."""
    if isinstance(obj, (list, tuple)):
        return 1 + max((depth(x) for x in obj), default=0)
    if isinstance(obj, dict):
        return 1 + max((max(depth(k), depth(v)) for k, v in obj.items()), default=0)
    if isinstance(obj, proton.Array):
        return 1 + max((depth(x) for x in obj.elements), default=0)
    if isinstance(obj, proton.Described):
        return 1 + max(depth(obj.descriptor), depth(obj.value))
    return 0


# --- the properties ----------------------------------------------------------------------


@pytest.mark.timeout(900)
@seed(SEED)
@FUZZ
@given(messages())
def test_both_decoders_agree_with_proton(message: proton.Message) -> None:
    data = message.encode()
    note(f"bytes: {data.hex()}")
    result = check_agree(data)
    deepest = max(
        depth(message.body) if not isinstance(message.body, bytes) else 0,
        depth(message.properties or {}),
        depth(dict(message.annotations or {})),
    )
    if deepest > codec.MAX_DEPTH:
        assert result[0] == "undecodable"
        return
    assert result[0] == "ok", "proton encoded it, so proton's decoder must read it"
    fields = codec.decode(data)
    # A few fields straight from what was put in, not through either decoder.
    assert fields["to"] == message.address and fields["subject"] == message.subject
    assert fields["durable"] is message.durable and fields["priority"] == message.priority
    if isinstance(message.body, bytes):
        assert fields["body"] == message.body and type(fields["body"]) is bytes
    assert set(fields["headers"]) == set(message.properties or {})
    timestamp = fields["timestamp"]
    assert timestamp is None or 1 <= timestamp.year <= 9999


MUTATIONS_PER_MESSAGE = 20


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four flips, overwrites, truncations or insertions."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.choice(("flip", "set", "truncate", "insert"))
        at = rng.randrange(len(out)) if out else 0
        if how == "flip" and out:
            out[at] ^= 1 << rng.randrange(8)
        elif how == "set" and out:
            out[at] = rng.randrange(256)
        elif how == "truncate":
            del out[at:]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 9))
    return bytes(out)


@pytest.mark.timeout(900)
@seed(SEED)
@settings(FUZZ, max_examples=max(EXAMPLES // 10, 1))
@given(messages(), st.randoms(use_true_random=False))
def test_mutated_bytes_decode_alike_or_fail_cleanly(
    message: proton.Message, rng: random.Random
) -> None:
    """Each example checks MUTATIONS_PER_MESSAGE mutants of one message (generating the
    message is what costs): 1,000 examples are 20,000 mutated messages."""
    data = message.encode()
    for _ in range(MUTATIONS_PER_MESSAGE):
        mutant = mutate(data, rng)
        note(f"mutant: {mutant.hex()}")
        check_agree(mutant)


# --- the cases the issue names ------------------------------------------------------------


def _nested_lists(levels: int) -> bytes:
    """An amqp-value section holding ``levels`` lists, one inside the other (list32)."""
    value = b"\x45"  # the innermost: an empty list (list0)
    for _ in range(levels - 1):
        value = b"\xd0" + struct.pack(">II", len(value) + 4, 1) + value
    return b"\x00\x53\x77" + value


@pytest.mark.parametrize("levels", [65, 100, 1000, 100_000])
def test_nesting_over_the_limit_is_a_decode_error(levels: int) -> None:
    data = _nested_lists(levels)
    with pytest.raises(codec.UndecodableMessage, match="deeper than 64 levels"):
        codec.decode(data)
    if levels <= 1000:  # proton's C decoder takes minutes over 100,000 levels
        with pytest.raises(codec.UndecodableMessage):
            codec.decode_proton(data)


def test_nesting_at_the_limit_decodes() -> None:
    data = _nested_lists(codec.MAX_DEPTH)
    assert check_agree(data)[0] == "ok"
    assert codec.decode(data)["body"] == b"[" * 64 + b"]" * 64


@pytest.mark.parametrize("ms", [10**15, -(10**15), 2**62, -(2**62)])
def test_creation_time_out_of_range_is_absent(ms: int) -> None:
    m = proton.Message(body=b"x", inferred=True)
    m.creation_time = ms / 1000
    data = m.encode()
    assert check_agree(data)[0] == "ok"
    assert codec.decode_fast(data)["timestamp"] is None
    assert codec.decode_proton(data)["timestamp"] is None


def test_rabbitmq_style_message_stays_on_the_fast_path() -> None:
    """What aiobus and RabbitMQ send is read by the fast path (it is kept for speed)."""
    data = codec.encode(
        to="/queues/q", body=b"b", message_id="m", headers={"a": 1, "t": "x"}, ttl=2
    )
    m = proton.Message(body=b"b", inferred=True, id=uuid.uuid4(), annotations={"x-opt-a": 1})
    for encoded in (data, m.encode()):
        assert outcome(codec.decode_fast, encoded)[0] == "ok"
        check_agree(encoded)


def test_undecodable_option_is_checked() -> None:
    assert Amqp1Options().undecodable == "reject"
    assert Amqp1Options(undecodable="modify").undecodable == "modify"
    with pytest.raises(ConfigError, match="undecodable must be"):
        Amqp1Options(undecodable="drop")  # type: ignore[arg-type]
