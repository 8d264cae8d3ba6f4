"""A child process of `dnsbl serve --workers N`: how it is forked, its channel to the parent, and a
worker's end of that channel. The parent's side, and the rules both follow, are in `workers.py`.

Messages are JSON objects, one per SOCK_SEQPACKET packet (no framing to get wrong), never blocking:
parent -> worker: `follow` (read the change journal and build), `swap` (serve what you built), `counts`
(send your counters now), `reopen` (the query log); child -> parent: `ready` (serving), `built` (after a
follow), `counts` (what it counted since its last counts message).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import DnsblError
from .statsfile import Tally

if TYPE_CHECKING:
    from .server import Counters, Holder
    from .zone import Zones

log = logging.getLogger("dnsbl.workers")

FLUSH_S = 1.0  # how often a worker sends its counts and flushes its query log
MAX_MESSAGE = 1 << 18
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The parent's signals: blocked around fork, so none is lost to a handler meant for the parent.
PARENT_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)
Message = dict[str, Any]


class Channel:
    """One end of a parent-child socket pair: whole JSON messages, never blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(one), cls(other)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> bool:
        """False when it could not go (the peer is gone, or too far behind): the caller decides."""
        try:
            self.sock.send(json.dumps(message, separators=(",", ":")).encode())
        except OSError:
            return False
        return True

    def receive(self) -> tuple[list[Message], bool]:
        """Every message waiting, and whether the other end is still there."""
        messages = []
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return messages, True
            except OSError:
                return messages, False
            if not data:
                return messages, False
            messages.append(json.loads(data))

    def close(self) -> None:
        self.sock.close()


def tally_fields(tally: Tally) -> list[int]:
    return [tally.ok, tally.nxd, tally.err, tally.bytes_in, tally.bytes_out]


# --- a child's life ------------------------------------------------------------------------------


def fork(run: Callable[[Channel], int], parent_fds: list[int]) -> tuple[int, Channel]:
    """`run(channel)` in a new process, whose exit code it returns; here, its pid and our end of the
    channel. The child first closes `parent_fds` (the parent's own: other children's channels, its
    signal pipe), so that a child sees the end of its channel when the parent dies."""
    ours, theirs = Channel.pair()
    parent = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_SIGNALS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_SIGNALS)
        theirs.close()
        return pid, ours
    code = 1
    try:
        ours.close()
        for fd in parent_fds:
            os.close(fd)
        _become_child(parent)
        code = run(theirs)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except DnsblError as error:  # not a bug: one line, as the CLI shows it
        log.error("pid %d: %s", os.getpid(), error)
    except BaseException:
        log.exception("pid %d failed", os.getpid())
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)  # never the parent's atexit handlers, nor finalizers of what it inherited


def _become_child(parent: int) -> None:
    """Signals as a child takes them (workers.py, "Signals"), and death with the parent."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the end of the channel stops it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_SIGNALS)
    if os.getppid() != parent:  # the parent died before prctl took hold
        os._exit(0)


class WorkerLink:
    """A worker's end of its channel, on the worker's event loop: follows, swaps, sends counts."""

    def __init__(
        self,
        channel: Channel,
        holder: Holder,
        counters: Counters,
        follow: Callable[[float], Zones | None],
        executor: Executor,
    ) -> None:
        self.channel = channel
        self.holder = holder
        self.counters = counters
        self.follow = follow  # runs in `executor`: SQLite is never read on the serving loop
        self.executor = executor
        self.on_reopen: Callable[[], None] = lambda: None
        self.on_flush: Callable[[], None] = lambda: None
        self.gone = asyncio.Event()  # the parent is: stop
        self.built: Zones | None = None
        self.building = False
        self.sent: dict[str, list[int]] = {}  # what the parent has already been sent, per zone ("" other)
        self.sent_metrics: dict[metrics.Key, float] = {}  # and of the metrics' counters
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._readable)
        self._spawn(self._every_flush())
        self.channel.send({"op": "ready"})

    def close(self) -> None:
        """The last counts, then no more messages."""
        asyncio.get_running_loop().remove_reader(self.channel.fileno())  # False if already removed
        for task in self.tasks:
            task.cancel()
        self.send_counts(0)
        self.on_flush()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _readable(self) -> None:
        messages, alive = self.channel.receive()
        for message in messages:
            self._handle(message)
        if not alive:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.gone.set()

    def _handle(self, message: Message) -> None:
        op = message.get("op")
        if op == "follow":
            self._follow(message["id"])
        elif op == "swap" and self.built is not None:
            self.holder.zones, self.built = self.built, None
        elif op == "counts":
            self.send_counts(message["id"])
        elif op == "reopen":
            self.on_reopen()

    def _follow(self, round_id: int) -> None:
        if self.building:  # still on an earlier round: it answers when done
            self.channel.send({"op": "built", "id": round_id, "changed": False})
            return
        self.building = True
        self._spawn(self._build(round_id))

    async def _build(self, round_id: int) -> None:
        try:
            zones = await asyncio.get_running_loop().run_in_executor(self.executor, self.follow, time.time())
        except Exception:  # keep serving what we have; the next round tries again
            log.exception("refreshing failed; still serving the previous data")
            zones = None
        finally:
            self.building = False
        if zones is not None:
            self.built = zones  # kept until the parent says swap, even if a later round finds nothing
        self.channel.send({"op": "built", "id": round_id, "changed": zones is not None})

    async def _every_flush(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.send_counts(0)
            self.on_flush()

    def send_counts(self, request: int) -> None:
        """What was counted since the last message (the counters themselves are never reset: the query
        path owns them). Sent when asked (`request` > 0) even if nothing was counted."""
        now = {name: tally_fields(t) for name, t in self.counters.zones.items()}
        now[""] = tally_fields(self.counters.other)
        delta = {
            name: [a - b for a, b in zip(value, self.sent.get(name, [0] * 5), strict=True)]
            for name, value in now.items()
            if value != self.sent.get(name)
        }
        counted = metrics.snapshot(self.counters)
        extra = metrics.delta(counted, self.sent_metrics)
        if not (delta or extra or request):
            return
        message = {"op": "counts", "id": request, "tallies": delta, "metrics": extra}
        if self.channel.send(message):  # else the parent gets it all with the next message
            self.sent = now
            self.sent_metrics = counted
