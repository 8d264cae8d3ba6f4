"""TCP abuse: the pure connection policy (`tcplimits`) as tables, then a real `dnsbl serve` with real
sockets from many loopback addresses (127.0.0.1 and 127.0.0.2 are different clients): caps in total
and per client, idle and read timeouts (a slow drip is closed), pipelined queries answered in order,
and a normal client served while the caps are hit."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.message
import pytest
from conftest import Server, poll, run_cli
from hypothesis import given
from hypothesis import strategies as st

from dnsbl_server.config import from_file
from dnsbl_server.errors import ConfigError
from dnsbl_server.tcplimits import Connections, Deadline, TcpLimits, client_key

V4, V6 = socket.AF_INET, socket.AF_INET6


def v4(text: str) -> tuple[int, int]:
    return V4, int.from_bytes(socket.inet_aton(text), "big")


def v6(text: str) -> tuple[int, int]:
    return V6, int.from_bytes(socket.inet_pton(V6, text), "big")


# --- the policy ---------------------------------------------------------------------------------


def test_client_is_the_ipv4_address_or_the_ipv6_64() -> None:
    assert client_key(v4("127.0.0.1")) != client_key(v4("127.0.0.2"))
    assert client_key(v6("2001:db8::1")) == client_key(v6("2001:db8::ffff:1"))
    assert client_key(v6("2001:db8::1")) != client_key(v6("2001:db8:0:1::1"))
    assert client_key(v6("::ffff:192.0.2.1")) != client_key(v6("::ffff:192.0.2.2"))  # mapped: per address


def test_a_client_over_its_cap_is_refused_and_nobody_else_is_touched() -> None:
    table = Connections[str](TcpLimits(max_connections=10, max_per_client=2))
    assert table.admit("a1", v4("127.0.0.1")).admit
    assert table.admit("a2", v4("127.0.0.1")).admit
    third = table.admit("a3", v4("127.0.0.1"))
    assert (third.admit, third.evict) == (False, None) and "2 connections" in third.reason
    assert table.admit("b1", v4("127.0.0.2")).admit
    table.release("a1")
    assert table.admit("a3", v4("127.0.0.1")).admit  # a slot freed
    assert (len(table), table.refused) == (3, 1)


def test_full_closes_the_oldest_idle_connection_for_the_new_one() -> None:
    table = Connections[str](TcpLimits(max_connections=3, max_per_client=3))
    for name in ("a", "b", "c"):
        assert table.admit(name, v4("127.0.0.1")).admit
    table.busy("a")  # a message half-read: not to be closed for room
    table.rested("a")  # whole again: now the newest idle one
    table.busy("b")
    admission = table.admit("d", v4("127.0.0.2"))
    assert (admission.admit, admission.evict) == (True, "c")
    assert set(table.clients) == {"a", "b", "d"} and table.evicted == 1
    table.release("c")  # the evicted connection's own close: nothing left to forget
    assert len(table) == 3


def test_full_with_nothing_idle_refuses_the_new_one() -> None:
    table = Connections[str](TcpLimits(max_connections=2, max_per_client=2))
    for name in ("a", "b"):
        table.admit(name, v4("127.0.0.1"))
        table.busy(name)
    admission = table.admit("c", v4("127.0.0.2"))
    assert (admission.admit, admission.evict) == (False, None) and "none idle" in admission.reason
    assert set(table.clients) == {"a", "b"}


def test_release_is_idempotent_and_rested_after_release_does_not_resurrect() -> None:
    table = Connections[str](TcpLimits(max_connections=2, max_per_client=1))
    table.admit("a", v4("127.0.0.1"))
    table.release("a")
    table.release("a")
    table.rested("a")
    assert (len(table), table.per_client, list(table.idle)) == (0, {}, [])


LIMITS = TcpLimits(idle_timeout=30, read_timeout=10)


def test_deadline_idle_then_read_timeout_from_the_first_byte() -> None:
    deadline = Deadline(LIMITS)
    assert deadline.fed(100.0, completed=1, pending=0) == 130.0  # whole messages: idle timeout
    assert deadline.fed(101.0, completed=0, pending=1) == 111.0  # a message begun: 10 s to finish it
    assert deadline.fed(105.0, completed=0, pending=5) == 111.0  # more bytes do not extend it
    assert deadline.fed(106.0, completed=1, pending=3) == 116.0  # one done, the next begun now
    assert deadline.fed(107.0, completed=1, pending=0) == 137.0
    assert not deadline.reading


def test_deadline_idle_shorter_than_read() -> None:
    deadline = Deadline(TcpLimits(idle_timeout=2, read_timeout=10))
    assert deadline.fed(0.0, completed=0, pending=1) == 2.0


@given(gap=st.floats(0.001, 5.0), count=st.integers(1, 500))
def test_a_slow_drip_never_moves_the_deadline_past_the_read_timeout(gap: float, count: int) -> None:
    """One byte of an unfinished message every `gap` seconds: each new byte gives a deadline no later
    than the first byte's time plus the read timeout."""
    deadline, first = Deadline(LIMITS), 1000.0
    for k in range(count):
        assert deadline.fed(first + k * gap, completed=0, pending=k + 1) <= first + LIMITS.read_timeout


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_connections": 0}, "max_connections must be a number of connections, at least 1, not 0"),
        ({"max_per_client": True}, "max_per_client must be"),
        ({"idle_timeout": 0}, "idle_timeout must be a number of seconds above 0, not 0"),
        ({"read_timeout": "10"}, "read_timeout must be"),
    ],
)
def test_limits_are_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TcpLimits(**values)  # type: ignore[arg-type]


def test_config_file_tcp_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "dnsbl.toml"
    path.write_text(
        '[tcp]\nmax_connections = 64\nmax_per_client = 4\nidle_timeout = "2m"\nread_timeout = 5\n'
    )
    assert from_file(path)[0].tcp == TcpLimits(64, 4, 120.0, 5)
    path.write_text("[tcp]\nmax_conns = 64\n")
    with pytest.raises(ConfigError, match=r"\[tcp\]: unknown setting\(s\) max_conns"):
        from_file(path)
    path.write_text('[tcp]\nidle_timeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[tcp\]: idle_timeout: invalid duration 'soon'"):
        from_file(path)


def test_bad_option_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(
        "serve", "--listen", "127.0.0.1:0", "--tcp-read-timeout", "later", db=tmp_path / "x.sqlite"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dnsbl: error: invalid duration 'later': use a number with s, m, h, d or w"
    ]


# --- a real server ------------------------------------------------------------------------------

LISTED = "2.0.0.127.bl.example.org"  # the RFC 5782 test point: listed in every zone
UNLISTED = "1.0.0.127.bl.example.org"


def query(qid: int, name: str = LISTED) -> bytes:
    message = dns.message.make_query(name, "A", id=qid).to_wire()
    return len(message).to_bytes(2, "big") + message


OPENED: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def connect(server: Server, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    """A connection from `source` (any 127.x address: each a client of its own), closed after the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    OPENED.append(sock)
    if rcvbuf:  # before connecting: the window is offered in the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((server.host, server.port))
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> dns.message.Message:
    size = int.from_bytes(read_exactly(sock, 2), "big")
    return dns.message.from_wire(read_exactly(sock, size))


def served(sock: socket.socket, qid: int = 7) -> bool:
    """Asks one query on the connection: True if it is answered, False if the server closed it."""
    try:
        sock.sendall(query(qid))
        return read_reply(sock).id == qid
    except (ConnectionError, OSError):
        return False


def closed(sock: socket.socket, within: float = 5.0) -> bool:
    """True when the server closes the connection within `within` seconds (nothing sent to it)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def sockets() -> list[socket.socket]:
    return []


def assert_no_traceback(server: Server) -> None:
    assert "Traceback" not in server.log and "error answering" not in server.log, server.log


@pytest.mark.slow
def test_fifty_pipelined_queries_in_one_write_answered_in_order(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve("--workers", "1")
    with connect(server) as sock:
        names = [LISTED if n % 3 else UNLISTED for n in range(50)]
        sock.sendall(b"".join(query(1000 + n, name) for n, name in enumerate(names)))
        replies = [read_reply(sock) for _ in names]
    assert [r.id for r in replies] == [1000 + n for n in range(50)]
    assert [r.rcode() for r in replies] == [0 if name == LISTED else 3 for name in names]


@pytest.mark.slow
def test_per_client_cap_closes_the_extra_connection_at_once(serve, sockets) -> None:  # type: ignore[no-untyped-def]
    """100 clients (127.0.1.x) with 3 connections each and a cap of 2: every client's first two are
    served, every third is closed at once; the first client's third fits once one of its own is gone."""
    server = serve("--workers", "1", "--tcp-max-per-client", "2")
    clients = [f"127.0.1.{n}" for n in range(1, 101)]
    for source in clients:
        sockets.extend(connect(server, source) for _ in range(3))
    thirds = sockets[2::3]
    assert all(closed(sock) for sock in thirds)
    kept = [sock for sock in sockets if sock not in thirds]
    assert all(served(sock, n) for n, sock in enumerate(kept))
    kept[0].close()

    def one_more() -> bool:
        sockets.append(connect(server, clients[0]))
        return served(sockets[-1])

    assert poll(one_more, timeout=5)  # once the server has seen the close
    assert_no_traceback(server)


@pytest.mark.slow
def test_total_cap_closes_the_oldest_idle_one_and_serves_the_newcomer(serve, sockets) -> None:  # type: ignore[no-untyped-def]
    server = serve("--workers", "1", "--tcp-max-connections", "8")
    for n in range(8):
        sockets.append(connect(server, f"127.0.2.{n + 1}"))
        assert served(sockets[-1], n)  # each one has been accepted and counted before the next
    newcomer = connect(server, "127.0.0.1")
    sockets.append(newcomer)
    assert served(newcomer, 99)
    assert closed(sockets[0])  # the oldest idle one made room
    assert all(served(sock, n) for n, sock in enumerate(sockets[1:8]))
    assert_no_traceback(server)


@pytest.mark.slow
def test_full_of_unfinished_messages_refuses_until_the_read_timeout_frees_them(serve, sockets) -> None:  # type: ignore[no-untyped-def]
    """Eight connections each holding half a message (none idle, so none is closed for room): a ninth is
    closed at once; the read timeout then closes the eight, and a normal client is served."""
    server = serve("--workers", "1", "--tcp-max-connections", "8", "--tcp-read-timeout", "2s")
    for n in range(8):
        sock = connect(server, f"127.0.3.{n + 1}")
        assert served(sock, n)
        sock.sendall(query(50 + n)[:10])
        sockets.append(sock)
    time.sleep(0.2)  # the halves have arrived
    started = time.monotonic()
    refused = connect(server, "127.0.0.1")
    sockets.append(refused)
    assert closed(refused, within=1.0)
    assert all(closed(sock, within=10) for sock in sockets[:8])
    assert time.monotonic() - started >= 1.5  # not before the read timeout (2 s from their first byte)
    assert served(connect(server, "127.0.0.1"))
    assert_no_traceback(server)


@pytest.mark.slow
def test_slow_drip_is_closed_after_the_read_timeout_while_others_are_served(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve("--workers", "1", "--tcp-read-timeout", "2s")
    drip = connect(server, "127.0.4.1")
    message = query(1)
    started, sent = time.monotonic(), 0
    drip.settimeout(0.01)
    with connect(server, "127.0.0.1") as normal:
        while time.monotonic() - started < 15:  # one byte a second would take 44 s
            try:
                drip.sendall(message[sent : sent + 1])
                sent += 1
            except OSError:
                break
            if closed(drip, within=1.0):
                break
            assert served(normal, sent)
    elapsed = time.monotonic() - started
    drip.close()
    assert 1.5 <= elapsed < 12 and sent < len(message), (elapsed, sent)
    assert_no_traceback(server)


@pytest.mark.slow
def test_idle_connection_closed_and_a_busy_one_kept(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve("--workers", "1", "--tcp-idle-timeout", "1s")
    with connect(server) as idle, connect(server) as busy:
        started = time.monotonic()
        for n in range(8):  # a query every 0.3 s for 2.4 s: never idle for 1 s
            assert served(busy, n)
            time.sleep(0.3)
        assert closed(idle, within=0.1)
        assert time.monotonic() - started >= 1.0
        assert served(busy, 99)


@pytest.mark.slow
def test_client_that_never_reads_is_not_read_from_and_is_closed_when_idle(serve) -> None:  # type: ignore[no-untyped-def]
    """Queries pipelined with no reply read: once its answers back up the server stops reading from that
    client (rather than holding every answer in memory), serves the others, and the idle timeout ends
    the connection even with answers unsent."""
    server = serve("--workers", "1", "--tcp-idle-timeout", "3s")
    hog = connect(server, "127.0.5.1", rcvbuf=4096)
    hog.setblocking(False)
    burst = b"".join(query(n) for n in range(2000))
    deadline, blocked = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        try:
            hog.send(burst)
            blocked = None
        except BlockingIOError:
            blocked = blocked or time.monotonic()
            if time.monotonic() - blocked >= 1.0:
                break  # a whole second and the server took nothing more: it has stopped reading
            time.sleep(0.05)
    assert blocked is not None and time.monotonic() - blocked >= 1.0
    assert served(connect(server, "127.0.0.1"))
    hog.setblocking(True)
    assert closed_with_unread_answers(hog, within=15)
    assert time.monotonic() - blocked >= 2.0
    assert_no_traceback(server)


def closed_with_unread_answers(sock: socket.socket, within: float) -> bool:
    """Waits without reading (reading would let the server go on), then looks: reset, or EOF after
    whatever answers were in flight."""
    time.sleep(within / 3)
    deadline = time.monotonic() + within
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            continue
    return False


@pytest.mark.slow
def test_two_workers_keep_a_cap_each(serve, sockets) -> None:  # type: ignore[no-untyped-def]
    """With two workers each counts its own: a client's connections are capped at 2 per worker."""
    server = serve("--workers", "2", "--tcp-max-per-client", "2")
    sockets.extend(connect(server, "127.0.6.1") for _ in range(10))
    time.sleep(0.5)
    alive = [sock for sock in sockets if served(sock, 5)]
    assert 2 <= len(alive) <= 4
    assert served(connect(server, "127.0.6.2"))
    assert_no_traceback(server)


@pytest.mark.slow
def test_a_slow_zone_transfer_is_not_idleness(serve, db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An AXFR read slowly, for several idle timeouts: it arrives whole (the SOA last); then the
    connection is idle as usual, and closed (the clock restarts when the server has sent the last
    message, which kernel buffers may hold a while before the client reads it)."""
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"10.{n // 250}.{n % 250}.1\n" for n in range(20000)))
    assert run_cli("import", "--zone", "bl.example.org", str(listing), db=db).returncode == 0
    server = serve("--workers", "1", "--tcp-idle-timeout", "1s", "--allow-transfer", "127.0.0.0/8")
    sock = connect(server, rcvbuf=4096)
    message = dns.message.make_query("bl.example.org", "AXFR", id=4242).to_wire()
    sock.sendall(len(message).to_bytes(2, "big") + message)
    started, soas, records = time.monotonic(), 0, 0
    while soas < 2:
        time.sleep(0.15)  # a few messages a second: the transfer takes several idle timeouts
        reply = read_reply(sock)
        assert reply.id == 4242 and reply.rcode() == 0
        records += sum(len(rrset) for rrset in reply.answer)
        soas += sum(rrset.rdtype == 6 for rrset in reply.answer)
    elapsed = time.monotonic() - started
    print(f"transfer: {records} records in {elapsed:.1f} s")
    assert records > 20000 and elapsed > 3, (records, elapsed)
    assert closed(sock, within=5)
    assert_no_traceback(server)
