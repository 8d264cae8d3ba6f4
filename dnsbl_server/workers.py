"""The parent of `dnsbl serve --workers N`: it loads, binds and forks N workers answering on the same
sockets (and, with [ingest], one trap process), then supervises them. A child's side is `child.py`; what
each process runs is the daemon's.

Why: one Python process answers on one CPU. The parent loads every zone once, then forks, so the
workers share the index's pages copy-on-write (`gc.freeze` keeps the collector from writing to them).

Rules:
- Fork only from a single-threaded parent: it runs no event loop, and its refresh thread is joined
  before any fork. No SQLite connection crosses a fork: `Plan.before_fork` closes the parent's, and
  each child opens its own.
- One socket per address, shared (not SO_REUSEPORT): every worker reads the same UDP socket and
  accepts on the same TCP one, so whichever worker is free takes the next query. SO_REUSEPORT hashes
  the 4-tuple, and put a whole dnsperf run on one worker (README, "Workers"). The parent holds the
  sockets, so what arrives while a worker restarts waits for the others.
- Every REFRESH_S the workers follow the change journal in two phases, `follow` then `swap` once all
  have built: they serve a change at the same moment, not up to REFRESH_S apart, so a client asking
  twice does not see the new answer and then the old. Not quite never: each reads the journal as it
  is when its own read starts, so a commit landing between two workers' reads (milliseconds apart,
  more on a loaded machine) reaches one of them a round (REFRESH_S) before the other.
- Data files are the parent's alone: it reloads them (one reload, one log line, one serial bump), then
  forks fresh workers from its new data, so that stays shared too; each old worker answers until its
  replacement is ready. The same after a bulk change to the SQLite list, which every process rebuilds
  whole: the parent's rebuild, forked, is shared; the workers' own would stay private.
- The query path does no IPC: workers send the deltas of their plain counters every second, when
  asked, and when they stop; the parent adds them up for the stats file and SIGUSR1/2, and for the
  metrics (`metrics.merge`), whose HTTP endpoint it serves on its own selector, never blocking.
- A child that dies unexpectedly is started again; MAX_FAILURES deaths in a row before the child was
  ready stop the server (exit 2). Children die with the parent (PR_SET_PDEATHSIG, and the end of
  their channel).
- Signals are the parent's: SIGTERM/SIGINT stop every child and then the parent (exit 0); SIGHUP,
  SIGUSR1 and SIGUSR2 are acted on by the parent, which tells the workers. Children ignore all but
  SIGTERM (`systemctl kill` signals every process of the unit, and a terminal's ^C the whole group).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from . import metrics
from .child import PARENT_SIGNALS, Channel, Message, fork
from .statsfile import Tally

if TYPE_CHECKING:
    from .server import Counters


class Endpoint(Protocol):
    """What the supervisor serves on its selector besides its children (`metrics_http.SelectorEndpoint`):
    callables as the keys' data, called when ready; never blocking."""

    def attach(self, selector: selectors.BaseSelector) -> None: ...

    def fds(self) -> list[int]: ...  # closed in every child


log = logging.getLogger("dnsbl.workers")

MAX_DEFAULT = 4  # the default never starts more workers than this, whatever the CPU count
REFRESH_S = 0.25  # how often workers are told to follow the change journal
# How often the parent follows it: only for the workers it will fork, which catch up with the journal
# before they answer; each follow costs every process the same work, CPU the workers need under load.
PARENT_REFRESH_S = 2.0
ROUND_S = 5.0  # the longest wait for every worker's build; then those that built swap anyway
COLLECT_S = 2.0  # the longest wait for every worker's counts before a stats line or report
STOP_S = 10.0  # how long stopping children get before SIGKILL
RESTART_GAP_S = 1.0  # a slot is not started again sooner than this after its last start
MAX_FAILURES = 3  # deaths in a row, each before the child was ready: give up


def default_count() -> int:
    """One worker per CPU this process may run on (taskset, cgroup cpusets), at most MAX_DEFAULT."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT))


@dataclass
class Plan:
    """What the supervisor runs; the daemon's to decide."""

    workers: int
    worker: Callable[[Channel], int]  # a worker's whole life, in the child
    trap: Callable[[Channel], int] | None  # the trap process's, when there is one
    refresh: Callable[[float, bool], bool]  # the parent's own (a thread): files due -> re-fork?
    before_fork: Callable[[], None]  # close what must not cross a fork (the SQLite connection)
    counters: Counters  # the sum of every worker's counts
    report: Callable[[], None]  # SIGUSR1
    reset: Callable[[], None]  # SIGUSR2
    write_stats: Callable[[], None]  # every check interval
    stop: Callable[[], None]  # last stats, at exit
    check_interval: float
    gauges: metrics.Gauges = field(default_factory=metrics.Gauges)  # set by the trap/ops process
    endpoint: Endpoint | None = None  # the metrics' HTTP endpoint, served on the parent's selector


@dataclass
class Child:
    kind: str  # "worker" or "trap"
    slot: int
    pid: int
    channel: Channel
    started: float
    ready: bool = False
    retiring: bool = False  # its replacement is on its way: stopped once that one is ready
    answered: int = 0  # queries counted since it started (the SIGUSR1 log shows who answers)


@dataclass
class Round:
    """Waiting for replies from these pids: to a follow (`changed` built something) or to counts."""

    ident: int
    waiting: set[int]
    deadline: float
    changed: set[int] = field(default_factory=set)


class Supervisor:
    """The parent's loop: children, signals, timers. Single-threaded but for the refresh thread."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.children: dict[int, Child] = {}
        self.pending: dict[tuple[str, int], float] = {}  # (kind, slot) -> when to start it
        self.failures: dict[tuple[str, int], int] = {}
        self.selector = selectors.DefaultSelector()
        self.signals, signal_w = _pipe()
        self.wake, self.wake_w = _pipe()
        self.own_fds = [self.signals, signal_w, self.wake, self.wake_w]
        self.ids = 0
        self.round: Round | None = None
        self.collecting: Round | None = None
        self.actions: list[Callable[[], None]] = []
        self.refreshing: threading.Thread | None = None
        self.reforks = False  # the refresh thread's verdict: new data files, fork the workers anew
        self.files_due = False
        now = time.monotonic()
        self.next_tick = now + REFRESH_S
        self.next_refresh = now + PARENT_REFRESH_S
        self.next_files = now + plan.check_interval
        self.next_stats = now + plan.check_interval
        self.stopping: float | None = None  # the SIGKILL deadline, once stopping
        self.code = 0
        signal.set_wakeup_fd(signal_w)
        for sig in PARENT_SIGNALS:
            signal.signal(sig, _noted)
        self.selector.register(self.signals, selectors.EVENT_READ, "signals")
        self.selector.register(self.wake, selectors.EVENT_READ, "refreshed")
        if plan.endpoint is not None:
            plan.endpoint.attach(self.selector)

    def run(self) -> int:
        for slot in range(self.plan.workers):
            self.pending[("worker", slot)] = 0.0
        if self.plan.trap is not None:
            self.pending[("trap", 0)] = 0.0
        while not (self.stopping and not self.children):
            self._step()
        if self.refreshing is not None:
            self.refreshing.join(STOP_S)
        self.plan.stop()
        log.info("stopped")
        return self.code

    def _step(self) -> None:
        events = self.selector.select(self._timeout())
        for key, _ in sorted(events, key=lambda event: event[0].data == "signals"):  # messages first
            if key.data == "signals":
                self._signals()
            elif key.data == "refreshed":
                self._refreshed()
            elif callable(key.data):  # the metrics endpoint's sockets
                key.data()
            else:
                self._messages(key.data)
        self._reap()
        now = time.monotonic()
        self._timers(now)
        self._start_due(now)

    def _timeout(self) -> float:
        times = [self.next_tick]
        times += [r.deadline for r in (self.round, self.collecting) if r is not None]
        times += [when for when in self.pending.values() if not self.stopping]
        if self.stopping:
            times.append(self.stopping)
        return max(0.0, min(times) - time.monotonic())

    # --- signals ---------------------------------------------------------------------------------

    def _signals(self) -> None:
        try:
            received = os.read(self.signals, 512)
        except BlockingIOError:
            return
        for number in received:
            self._signal(number)

    def _signal(self, number: int) -> None:
        if number in (signal.SIGTERM, signal.SIGINT):
            self.stop(0)
        elif number == signal.SIGHUP:
            self._tell_workers({"op": "reopen"}, starting=True)
            self.files_due = True
            self.next_tick = time.monotonic()
        elif number == signal.SIGUSR1:
            self._collect(self.plan.report)
            self._collect(self._log_workers)
        elif number == signal.SIGUSR2:
            self._collect(self.plan.reset)

    def _log_workers(self) -> None:
        workers = sorted((c for c in self.children.values() if c.kind == "worker"), key=lambda c: c.slot)
        answered = ", ".join(f"worker {c.slot} (pid {c.pid}) {c.answered}" for c in workers)
        log.info("queries answered since each worker started: %s", answered or "no workers")

    def stop(self, code: int) -> None:
        if self.stopping:
            return
        self.code = code
        self.stopping = time.monotonic() + STOP_S
        self.pending.clear()
        for child in self.children.values():
            _kill(child.pid, signal.SIGTERM)

    # --- children --------------------------------------------------------------------------------

    def _start_due(self, now: float) -> None:
        """Start the children that are due, unless the refresh thread runs: only a single-threaded
        process may fork."""
        if self.stopping or self.refreshing is not None:
            return
        for (kind, slot), when in sorted(self.pending.items()):
            if when <= now:
                del self.pending[(kind, slot)]
                self._start(kind, slot)

    def _start(self, kind: str, slot: int) -> None:
        self.plan.before_fork()
        gc.collect()  # then freeze: the collector never writes to what the children share
        gc.freeze()
        run = self.plan.worker if kind == "worker" else self.plan.trap
        assert run is not None
        pid, channel = fork(run, self._parent_fds())
        self.children[pid] = Child(kind, slot, pid, channel, time.monotonic())
        self.selector.register(channel.fileno(), selectors.EVENT_READ, pid)

    def _parent_fds(self) -> list[int]:
        endpoint = self.plan.endpoint.fds() if self.plan.endpoint is not None else []
        children = (c.channel.fileno() for c in self.children.values())
        return [*self.own_fds, self.selector.fileno(), *endpoint, *children]

    def _messages(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is None:
            return
        messages, _alive = child.channel.receive()  # its death is seen by waitpid
        for message in messages:
            self._message(child, message)

    def _message(self, child: Child, message: Message) -> None:
        op = message.get("op")
        if op == "ready":
            self._ready(child)
        elif op == "built":
            self._built(child, message["id"], message["changed"])
        elif op == "counts":
            self._counted(child, message)

    def _ready(self, child: Child) -> None:
        child.ready = True
        self.failures.pop((child.kind, child.slot), None)
        log.info("%s %d answering (pid %d)", child.kind, child.slot, child.pid)
        for old in self.children.values():  # the one it replaces, after new data files
            if old.retiring and old is not child and (old.kind, old.slot) == (child.kind, child.slot):
                _kill(old.pid, signal.SIGTERM)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._gone(child, status)

    def _gone(self, child: Child, status: int) -> None:
        self._messages_of(child)  # what it sent before it died: its last counts
        self.selector.unregister(child.channel.fileno())
        child.channel.close()
        for waiting in (self.round, self.collecting):
            if waiting is not None:
                waiting.waiting.discard(child.pid)
        if not (self.stopping or child.retiring):
            self._died(child, status)

    def _messages_of(self, child: Child) -> None:
        messages, _alive = child.channel.receive()
        for message in messages:
            self._message(child, message)

    def _died(self, child: Child, status: int) -> None:
        key = (child.kind, child.slot)
        how = _how(status)
        if not child.ready:
            self.failures[key] = self.failures.get(key, 0) + 1
            if self.failures[key] >= MAX_FAILURES:
                log.error(
                    "%s %d %s before it was ready, %d times in a row; stopping", *key, how, MAX_FAILURES
                )
                self.stop(2)
                return
        log.warning("%s %d (pid %d) %s; starting another", child.kind, child.slot, child.pid, how)
        self.pending.setdefault(key, max(time.monotonic(), child.started + RESTART_GAP_S))

    def _reforks(self) -> None:
        """New data files: fresh workers forked from the parent's new data, so it stays shared. Each old
        one answers until its replacement is ready."""
        for child in self.children.values():
            if child.kind == "worker" and not child.retiring:
                child.retiring = True
                self.pending[("worker", child.slot)] = 0.0

    def _tell_workers(self, message: Message, *, starting: bool = False) -> set[int]:
        """Sent to every ready worker (and, if `starting`, to those not ready yet, which read it once they
        are); returns their pids."""
        told = set()
        for child in self.children.values():
            if child.kind == "worker" and (child.ready or starting) and child.channel.send(message):
                told.add(child.pid)
        return told

    # --- timers: the follow rounds, the parent's refresh, stats ------------------------------------

    def _timers(self, now: float) -> None:
        if self.round is not None and (not self.round.waiting or now >= self.round.deadline):
            self._swap()
        if self.collecting is not None and (not self.collecting.waiting or now >= self.collecting.deadline):
            self._collected()
        if self.stopping:
            if now >= self.stopping:
                self.stopping = now + 1.0  # then look again, not at once: waitpid needs a moment
                for child in self.children.values():
                    _kill(child.pid, signal.SIGKILL)
            return
        if now >= self.next_tick:
            self.next_tick = now + REFRESH_S
            self._tick(now)
        if self.plan.check_interval > 0 and now >= self.next_stats:
            self.next_stats = now + self.plan.check_interval
            self._collect(self.plan.write_stats)

    def _tick(self, now: float) -> None:
        if self.round is None:
            self.ids += 1
            told = self._tell_workers({"op": "follow", "id": self.ids})
            self.round = Round(self.ids, told, now + ROUND_S)
        if self.refreshing is None and not any(when <= now for when in self.pending.values()):
            files_due = self.files_due or (self.plan.check_interval > 0 and now >= self.next_files)
            if not files_due and now < self.next_refresh:
                return
            self.next_refresh = now + PARENT_REFRESH_S
            if files_due:
                self.files_due = False
                self.next_files = now + self.plan.check_interval
            self.refreshing = threading.Thread(
                target=self._refresh, args=(files_due,), name="refresh", daemon=True
            )
            self.refreshing.start()

    def _refresh(self, files_due: bool) -> None:
        """The refresh thread: the parent's own data, for the children it will fork."""
        try:
            self.reforks = self.plan.refresh(time.time(), files_due) or self.reforks
        except Exception:
            log.exception("refreshing failed; still serving the previous data")
        finally:
            os.write(self.wake_w, b".")

    def _refreshed(self) -> None:
        os.read(self.wake, 64)
        if self.refreshing is not None:
            self.refreshing.join()
            self.refreshing = None
        if self.reforks and not self.stopping:
            self.reforks = False
            self._reforks()

    def _built(self, child: Child, round_id: int, changed: bool) -> None:
        current = self.round
        if current is not None and current.ident == round_id:
            current.waiting.discard(child.pid)
            if changed:
                current.changed.add(child.pid)
        elif changed:  # too late for its round, which has swapped: swap alone
            child.channel.send({"op": "swap"})

    def _swap(self) -> None:
        assert self.round is not None
        for pid in self.round.changed:
            if pid in self.children:
                self.children[pid].channel.send({"op": "swap"})
        self.round = None

    def _collect(self, action: Callable[[], None]) -> None:
        """Run `action` once every worker has sent its counts (or COLLECT_S has passed)."""
        self.actions.append(action)
        if self.collecting is None:
            self.ids += 1
            # a worker answers queries before it says it is ready: ask it too
            told = self._tell_workers({"op": "counts", "id": self.ids}, starting=True)
            self.collecting = Round(self.ids, told, time.monotonic() + COLLECT_S)

    def _counted(self, child: Child, message: Message) -> None:
        for name, values in message["tallies"].items():
            tally = Tally(*values)
            child.answered += tally.total
            if name:
                self.plan.counters.zones[name] = self.plan.counters.zones.get(name, Tally()) + tally
            else:
                self.plan.counters.other = self.plan.counters.other + tally
        metrics.merge(self.plan.counters, self.plan.gauges, message.get("metrics", []))
        if self.collecting is not None and message["id"] == self.collecting.ident:
            self.collecting.waiting.discard(child.pid)

    def _collected(self) -> None:
        actions, self.actions, self.collecting = self.actions, [], None
        for action in actions:
            action()


def _pipe() -> tuple[int, int]:
    """A non-blocking pipe (not inherited across exec, as every fd Python makes)."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


def _noted(signum: int, frame: object) -> None:
    """Python-level handler: the number reaches the loop through the wakeup fd."""


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: waitpid will say how
        os.kill(pid, sig)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else number
        return f"was killed by signal {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
