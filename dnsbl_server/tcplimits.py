"""TCP connection limits: who may hold a connection, and for how long. Pure policy: no socket, no loop,
no clock of its own; `server.TcpProtocol` calls it with the time and closes what it is told to.

Rules (README, "TCP limits"; RFC 7766 section 6.2.3 and RFC 7828: a server may close idle connections,
and should when its resources run short):
- Every count is per serving process (each worker accepts on the shared socket and counts its own).
- A client is its IPv4 address, or its IPv6 /64 (one host easily has a whole /64); 127.0.0.1 and
  127.0.0.2 are two clients.
- A new connection from a client that already holds `max_per_client`: closed at once. That client is
  the one asking for more than its share, so it pays, and nobody else's connection is touched.
- A new connection when the process holds `max_connections`: the oldest *idle* connection (no message
  half-read, no zone transfer running) is closed to make room, and the new one is served; if none is
  idle, the new one is closed at once. Idle connections serve nobody, and a client whose idle one is
  closed just opens another (RFC 7766 clients must expect it); refusing the newcomer instead would let
  a few hundred idle sockets lock every real client out for the whole idle timeout.
- Idle timeout: no byte received for `idle_timeout` closes the connection (a zone transfer being sent
  is not idleness: the protocol stops the clock while it runs).
- Read timeout: a message started must be whole within `read_timeout` of its first byte, however the
  bytes trickle in, so a client dripping one byte a second cannot hold a connection by never finishing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ConfigError

C = TypeVar("C")  # a connection: whatever the adapter uses (TcpProtocol), compared by identity


@dataclass(frozen=True)
class TcpLimits:
    max_connections: int = 256  # per serving process; below the common 1024 open-files limit
    max_per_client: int = 16  # a busy resolver retrying truncated answers needs a few, not hundreds
    idle_timeout: float = 30.0  # seconds without a byte received (RFC 7766 section 6.2.3)
    read_timeout: float = 10.0  # seconds from a message's first byte to its last

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tcp {name} must be a number of connections, at least 1, not {value!r}")
        for name in ("idle_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"tcp {name} must be a number of seconds above 0, not {value!r}")


def client_key(client: tuple[int, int] | None) -> tuple[int, int]:
    """The client a connection counts against: (family, address), IPv6 cut to its /64."""
    if client is None:
        return (0, 0)
    family, address = client
    if family == socket.AF_INET6 and not ipaddress.IPv6Address(address).ipv4_mapped:
        return family, address >> 64 << 64
    return client


@dataclass(frozen=True)
class Admission(Generic[C]):
    """What to do with a new connection: serve it or not, and which connection to close first."""

    admit: bool
    evict: C | None = None
    reason: str = ""  # why it was refused: for the debug log


class Connections(Generic[C]):
    """The open connections of one process, by client, with the idle ones in the order they fell idle."""

    def __init__(self, limits: TcpLimits | None = None) -> None:
        self.limits = limits or TcpLimits()
        self.clients: dict[C, tuple[int, int]] = {}
        self.per_client: dict[tuple[int, int], int] = {}
        self.idle: OrderedDict[C, None] = OrderedDict()  # oldest idle first
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.clients)

    def admit(self, conn: C, client: tuple[int, int] | None) -> Admission[C]:
        """Register `conn` if the limits allow it (see the module rules); the caller closes `evict`
        (which `release` then forgets) and, when refused, `conn` itself."""
        key = client_key(client)
        if self.per_client.get(key, 0) >= self.limits.max_per_client:
            self.refused += 1
            return Admission(False, reason=f"client holds {self.limits.max_per_client} connections")
        evict = None
        if len(self.clients) >= self.limits.max_connections:
            if not self.idle:
                self.refused += 1
                return Admission(False, reason=f"{self.limits.max_connections} connections, none idle")
            evict = next(iter(self.idle))
            self.release(evict)
            self.evicted += 1
        self.clients[conn] = key
        self.per_client[key] = self.per_client.get(key, 0) + 1
        self.idle[conn] = None
        return Admission(True, evict)

    def busy(self, conn: C) -> None:
        """A message half-read or a transfer running: not to be closed for room."""
        self.idle.pop(conn, None)

    def rested(self, conn: C) -> None:
        """Nothing in progress any more: the newest idle connection."""
        if conn in self.clients:
            self.idle.pop(conn, None)
            self.idle[conn] = None

    def release(self, conn: C) -> None:
        """The connection is closed (or about to be): forget it. Idempotent."""
        key = self.clients.pop(conn, None)
        self.idle.pop(conn, None)
        if key is None:
            return
        left = self.per_client[key] - 1
        if left:
            self.per_client[key] = left
        else:
            del self.per_client[key]


class Deadline:
    """When one connection is to be closed for silence or a message never finished."""

    def __init__(self, limits: TcpLimits) -> None:
        self.limits = limits
        self.started: float | None = None  # when the message in progress got its first byte

    def fed(self, now: float, completed: int, pending: int) -> float:
        """Bytes arrived at `now`: `completed` messages came whole and `pending` bytes wait for the
        next. Returns the new deadline."""
        if not pending:
            self.started = None
        elif completed or self.started is None:  # the bytes left over began a new message just now
            self.started = now
        return self.at(now)

    def resumed(self, now: float) -> float:
        """The clocks start again at `now` (a zone transfer, during which they stood still, is done):
        returns the new deadline."""
        if self.started is not None:
            self.started = now
        return self.at(now)

    def at(self, last: float) -> float:
        """The deadline, given the time the last byte arrived."""
        idle = last + self.limits.idle_timeout
        return idle if self.started is None else min(idle, self.started + self.limits.read_timeout)

    @property
    def reading(self) -> bool:
        return self.started is not None
