"""The inbound cap's packet-boundary tracker (``SizeGuard``), as pure logic: any stream of MQTT
packets, cut into chunks anywhere, is followed exactly; the first packet over the limit is
found at its header, with its whole size."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobus.transports.mqtt_session import varint
from aiobus.transports.mqtt_wire import SizeGuard


def packet(remaining: int) -> bytes:
    return b"\x30" + varint(remaining) + b"\xab" * remaining


def header(remaining: int) -> bytes:
    return b"\x30" + varint(remaining)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(
    sizes=st.lists(st.integers(0, 400), max_size=30),
    cuts=st.lists(st.integers(0, 100_000), max_size=40),
)
def test_packets_within_the_limit_pass(sizes: list[int], cuts: list[int]) -> None:
    guard = SizeGuard(1 + 2 + 400)
    stream = b"".join(packet(n) for n in sizes)
    for chunk in chunks(stream, cuts):
        assert guard.feed(chunk) is None


@given(
    before=st.lists(st.integers(0, 300), max_size=10),
    over=st.integers(301, 300_000_000 // 2),
    cuts=st.lists(st.integers(0, 100_000), max_size=20),
)
def test_the_first_packet_over_the_limit_is_found_at_its_header(
    before: list[int], over: int, cuts: list[int]
) -> None:
    limit = 1 + 2 + 300
    guard = SizeGuard(limit)
    # Only the oversized packet's header is sent: the guard must not need its body.
    stream = b"".join(packet(n) for n in before) + header(over)
    found = [r for r in (guard.feed(c) for c in chunks(stream, cuts)) if r is not None]
    assert found[:1] == [1 + len(varint(over)) + over]


def test_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    assert SizeGuard(1 + 1 + 100).feed(packet(100)) is None
    assert SizeGuard(1 + 1 + 100).feed(header(101)) == 103


@pytest.mark.parametrize("split", range(1, 6))
def test_a_malformed_remaining_length_is_reported(split: int) -> None:
    data = b"\x30\xff\xff\xff\xff\x01"
    guard = SizeGuard(1 << 30)
    results = [guard.feed(data[:split]), guard.feed(data[split:])]
    assert -1 in results


def test_max_receive_size_option() -> None:
    import aiobus
    from aiobus.url import parse

    assert parse("mqtt://h").options.max_receive_size == 16 * 1024 * 1024
    assert parse("mqtt://h/?max_receive_size=4096").options.max_receive_size == 4096
    for bad in (0, 63, 268_435_461):
        with pytest.raises(aiobus.ConfigError, match="max_receive_size must be 64-268,435,460"):
            parse("mqtt://h", max_receive_size=bad)
