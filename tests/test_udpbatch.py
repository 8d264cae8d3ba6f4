"""UDP in batches (`udpbatch.BatchReader`): real sockets on loopback, a real event loop (the server's).

Datagrams are queued in the server's socket before the reader starts, so the reader takes them in full
batches (and more than ROUNDS of them in a row); the client runs in a thread and reads what comes back.
The last test serves the same `Handler` both ways in (batches and the loop's datagram endpoint) and
compares the replies byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest
from test_fastpath import LISTED, address_labels, handler, message, opt_record, zone_labels

from dnsbl_server import udpbatch
from dnsbl_server.loop import run
from dnsbl_server.server import attach, bind
from dnsbl_server.udpbatch import Answer

# Linux always has recvmmsg: skipping on `available()` would hide the batches being off by mistake
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="recvmmsg is Linux's")


Sends = Callable[[tuple[Any, ...]], list[socket.socket]]
Collect = Callable[[list[socket.socket]], Any]


def serve_queued(host: str, answer: Answer, sends: Sends, collect: Collect) -> Any:
    """Binds a server socket on `host` as `dnsbl serve` does, lets `sends(address)` queue datagrams to
    it (returning its client sockets), then reads them with a BatchReader until `collect(clients)`, in
    a thread, is done. Returns what `collect` returns."""
    udp, tcp, _ = bind(f"[{host}]:0" if ":" in host else f"{host}:0")
    tcp.close()
    clients = sends(udp.getsockname())

    async def main() -> Any:
        reader = udpbatch.BatchReader(udp, answer)
        try:
            return await asyncio.wait_for(asyncio.to_thread(collect, clients), 30)
        finally:
            reader.close()

    try:
        return run(main())
    finally:
        for client in clients:
            client.close()


def receive(client: socket.socket, count: int) -> tuple[tuple[Any, ...], list[bytes]]:
    """The client's own address, and the next `count` datagrams it gets."""
    client.settimeout(10)
    return client.getsockname(), [client.recv(65535) for _ in range(count)]


def sender(family: int, host: str) -> socket.socket:
    client = socket.socket(family, socket.SOCK_DGRAM)
    client.bind((host, 0))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return client


def signed(data: bytes, peer: tuple[Any, ...]) -> bytes:
    """The answer for these tests: the datagram and the peer it came from, as the reader decoded it."""
    return data + b"|" + repr(peer).encode()


def test_the_server_reads_udp_in_batches_here() -> None:
    assert udpbatch.available()


FAMILIES = [(socket.AF_INET, "127.0.0.1")] + ([(socket.AF_INET6, "::1")] if socket.has_ipv6 else [])


@pytest.mark.parametrize(("family", "host"), FAMILIES)
def test_each_sender_gets_its_own_answers_in_order(family: int, host: str) -> None:
    """Peers decoded as the socket module gives them ((host, port) or (host, port, flow, scope)), and
    every answer sent back to its own peer, in order, across many batches."""
    per_client = 150
    assert 5 * per_client > udpbatch.BATCH * udpbatch.ROUNDS  # the reader comes back for more

    def sends(address: tuple[Any, ...]) -> list[socket.socket]:
        clients = [sender(family, host) for _ in range(5)]
        for n in range(per_client):
            for i, client in enumerate(clients):
                client.sendto(b"%d-%d" % (i, n), address)
        return clients

    got = serve_queued(host, signed, sends, lambda clients: [receive(c, per_client) for c in clients])
    for i, (own, replies) in enumerate(got):
        assert replies == [b"%d-%d|" % (i, n) + repr(own).encode() for n in range(per_client)]


def test_a_query_that_raises_or_gets_nothing_loses_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    def answer(data: bytes, peer: tuple[Any, ...]) -> bytes | None:
        if data == b"boom":
            raise ValueError("a bug")
        return None if data == b"none" else data.upper()

    def sends(address: tuple[Any, ...]) -> list[socket.socket]:
        one, two = sender(socket.AF_INET, "127.0.0.1"), sender(socket.AF_INET, "127.0.0.1")
        for client, data in (
            (one, b"a"),
            (two, b"boom"),
            (one, b"b"),
            (two, b"none"),
            (two, b"c"),
            (one, b"d"),
        ):
            client.sendto(data, address)
        return [one, two]

    with caplog.at_level(logging.ERROR, logger="dnsbl.server"):
        got = serve_queued("127.0.0.1", answer, sends, lambda c: [receive(c[0], 3), receive(c[1], 1)])
    assert [replies for _, replies in got] == [[b"A", b"B", b"D"], [b"C"]]
    assert "error answering a UDP query from 127.0.0.1" in caplog.text
    assert "ValueError: a bug" in caplog.text


def test_the_largest_datagrams_go_whole_both_ways() -> None:
    largest = 65507  # an IPv4 UDP payload's most

    def answer(data: bytes, peer: tuple[Any, ...]) -> bytes:
        return (b"%d:" % len(data)).ljust(largest, b"y")

    def sends(address: tuple[Any, ...]) -> list[socket.socket]:
        client = sender(socket.AF_INET, "127.0.0.1")
        for size in (largest, 1, largest):
            client.sendto(b"x" * size, address)
        return [client]

    _, replies = serve_queued("127.0.0.1", answer, sends, lambda clients: receive(clients[0], 3))
    assert [r[: r.index(b":") + 1] for r in replies] == [b"65507:", b"1:", b"65507:"]
    assert {len(r) for r in replies} == {largest}


QUERIES = [
    message(address_labels(address) + zone_labels(zone), qtype, opt=opt, ident=n)
    for n, (address, zone, qtype, opt) in enumerate(
        (address, zone, qtype, opt)
        for address in LISTED[:12] + ["192.0.2.99", "2001:db8::1"]
        for zone in ("bl.example", "files.example", "nowhere.example")
        for qtype in (1, 16, 255, 28)
        for opt in (None, opt_record(), opt_record(payload=512, do=True))
    )
] + [b"", b"\x00" * 11, b"\xff" * 40]  # too short: dropped; garbage: FORMERR or dropped
BAD = 3  # the last three: not every one is answered, so they are asked last and waited for briefly


def test_both_ways_in_answer_alike() -> None:
    """The same Handler read in batches and by the loop's datagram endpoint gives the same replies."""

    def replies(batch: bool) -> list[bytes | None]:
        udp, tcp, _ = bind("127.0.0.1:0")
        address = udp.getsockname()

        def ask() -> list[bytes | None]:
            client = sender(socket.AF_INET, "127.0.0.1")
            out: list[bytes | None] = []
            for n, query in enumerate(QUERIES):
                client.settimeout(10 if n < len(QUERIES) - BAD else 0.5)  # a late reply would shift the rest
                client.sendto(query, address)
                try:
                    out.append(client.recv(65535))
                except TimeoutError:
                    out.append(None)
            client.close()
            return out

        async def main() -> list[bytes | None]:
            closers = await attach(handler(), udp, tcp, batch=batch)
            try:
                return await asyncio.wait_for(asyncio.to_thread(ask), 120)
            finally:
                for closer in closers:
                    closer.close()

        return run(main())

    batched, endpoint = replies(True), replies(False)
    assert batched == endpoint
    assert all(r is not None for r in batched[:-BAD])  # every real query answered
