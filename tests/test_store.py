"""The SQLite store and the loader that follows it, on real database files."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from dnsbl_server.addresses import parse_target
from dnsbl_server.allowlist import Allowlist
from dnsbl_server.errors import StoreError
from dnsbl_server.loader import FOLD_AT, Loader
from dnsbl_server.migrations import STEPS
from dnsbl_server.policy import Hit, Policy
from dnsbl_server.store import COALESCE_S, Listing, Store
from dnsbl_server.zone import ZoneSettings

Z = "bl.example.org"
IP_192_0_2_9, IP_192_0_2_10 = 0xC0000209, 0xC000020A
T0 = 1_800_000_000.0


def listing(target: str, code: int = 2, reason: str = "", expires: float | None = None) -> Listing:
    return Listing(parse_target(target), 0x7F000000 | code, reason, expires)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "sub" / "dir" / "db.sqlite")
    s.ensure_zone(Z, T0)
    return s


def test_opens_in_wal_mode_with_schema_version(store: Store) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(STEPS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {len(STEPS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)


def test_same_target_and_source_updates(store: Store) -> None:
    store.add(Z, [listing("10.20", 2, "a")], source="manual", now=T0)
    store.add(Z, [listing("10.20.0.0/16", 3, "b")], source="manual", now=T0 + 1)
    store.add(Z, [listing("10.20.0.0-10.20.255.255", 4, "c")], source="trap:bounce", now=T0 + 2)
    entries = sorted(store.entries(Z), key=lambda e: e.key)
    assert [(e.key, e.code & 0xFF, e.reason) for e in entries] == [
        (("10.20.0.0/16", "manual"), 3, "b"),
        (("10.20.0.0/16", "trap:bounce"), 4, "c"),
    ]


def test_every_change_moves_the_serial_forward(store: Store) -> None:
    serials = [store.serial(Z, T0)]
    for i in range(5):  # several changes within one second still move it
        store.add(Z, [listing(f"192.0.2.{i}")], source="manual", now=T0 + 0.1 * i)
        serials.append(store.serial(Z, T0 + 0.1 * i))
    store.remove(Z, [parse_target("192.0.2.0")], source=None, now=T0 + 1)
    serials.append(store.serial(Z, T0 + 1))
    assert all(b > a for a, b in zip(serials, serials[1:], strict=False))


def test_expiry_moves_the_serial_at_its_moment(store: Store) -> None:
    store.add(
        Z,
        [listing("192.0.2.1", expires=T0 + 100), listing("192.0.2.2", expires=T0 + 200)],
        source="manual",
        now=T0,
    )
    s0 = store.serial(Z, T0 + 50)
    s1 = store.serial(Z, T0 + 100)
    s2 = store.serial(Z, T0 + 250)
    assert s0 < s1 < s2
    store.add(Z, [listing("192.0.2.3")], source="manual", now=T0 + 300)
    assert store.serial(Z, T0 + 300) > s2  # a write after expiries never goes back


def test_test_points_are_protected(store: Store) -> None:
    for bad in ("127.0.0.1", "127.0.0.0/8", "!127.0.0.2", "!127.0.0.0/30"):
        with pytest.raises(StoreError, match="127.0.0"):
            store.add(Z, [listing(bad)], source="manual", now=T0)
    assert list(store.entries(Z)) == []


def test_add_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(StoreError):
        store.add(Z, [listing("192.0.2.1"), listing("127.0.0.1")], source="manual", now=T0)
    assert list(store.entries(Z)) == []
    with pytest.raises(StoreError, match="no zone"):
        store.add("other.example", [listing("192.0.2.1")], source="manual", now=T0)


def test_remove_exact_and_hierarchical_source(store: Store) -> None:
    store.add(Z, [listing("192.0.2.1")], source="trap:bounce", now=T0)
    store.add(Z, [listing("192.0.2.1")], source="trapdoor", now=T0)
    store.add(Z, [listing("192.0.2.0/24")], source="manual", now=T0)
    assert store.remove(Z, [parse_target("192.0.2.2")], source=None, now=T0) == []
    assert [e.key for e in store.covering(Z, parse_target("192.0.2.2"))] == [("192.0.2.0/24", "manual")]
    removed = store.remove(Z, [parse_target("192.0.2.1")], source="trap", now=T0)
    assert removed == [("192.0.2.1", "trap:bounce")]
    assert {e.key[1] for e in store.entries(Z)} == {"trapdoor", "manual"}


def _writer(path: str, worker: int, count: int) -> None:
    store = Store.open(path)
    for i in range(count):
        store.add(Z, [listing(f"10.{worker}.{i // 256}.{i % 256}")], source=f"w{worker}", now=T0 + i)


def test_concurrent_writers_all_land(store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store.path, w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(list(store.entries(Z))) == 450
    assert store.last_seq() >= 450


def test_loader_follows_another_connection_with_an_overlay(store: Store) -> None:
    store.add(Z, [listing("192.0.2.0/24", 3)], source="manual", now=T0)
    loader = Loader(Store.open(store.path), None, lambda _: ZoneSettings())
    zones = loader.load(T0)
    base = next(iter(zones)).index.segments
    assert loader.refresh(T0) is None  # nothing changed
    store.add(Z, [listing("192.0.2.9", 4)], source="manual", now=T0 + 1)
    store.add(Z, [listing("!192.0.2.10")], source="manual", now=T0 + 1)
    zone = next(iter(loader.refresh(T0 + 1)))  # type: ignore[arg-type]
    assert zone.index.segments is base  # no full rebuild for a small change
    assert [e.code & 0xFF for e in zone.index.lookup(4, IP_192_0_2_9, T0)] == [4]
    assert zone.index.lookup(4, IP_192_0_2_10, T0) == ()
    assert zone.serial == store.serial(Z, T0 + 1)
    store.remove(Z, [parse_target("192.0.2.9")], source=None, now=T0 + 2)
    zone = next(iter(loader.refresh(T0 + 2)))  # type: ignore[arg-type]
    assert [e.code & 0xFF for e in zone.index.lookup(4, IP_192_0_2_9, T0)] == [3]


def test_loader_folds_a_large_overlay_and_sees_new_zones(store: Store) -> None:
    loader = Loader(Store.open(store.path), None, lambda _: ZoneSettings())
    loader.load(T0)
    store.add(Z, [listing(f"10.0.{i // 256}.{i % 256}") for i in range(FOLD_AT + 10)], source="bulk", now=T0)
    zone = next(iter(loader.refresh(T0)))  # type: ignore[arg-type]
    assert not zone.index.changed and len(list(zone.index.entries())) == FOLD_AT + 10
    store.ensure_zone("other.example", T0)
    assert {z.name for z in loader.refresh(T0)} == {Z, "other.example"}  # type: ignore[union-attr]


def hit(at: float, ip: int, message_id: str) -> Hit:
    return Hit(at, 4, ip, "bounce", message_id, "trap@example.org", "test")


def record(store: Store, at: float, ip: int, message_id: str) -> None:
    store.record_hits(Z, [hit(at, ip, message_id)], Policy(), Allowlist.of([]), at)


def test_trap_hit_serial_changes_are_coalesced(store: Store) -> None:
    record(store, T0 + 100, 0x5DB80001, "<a>")  # the first change after a quiet spell: at once
    first = store.serial(Z, T0 + 100)
    assert first >= T0 + 100  # moved at once (the zone's serial was T0)
    for i in range(1, 5):  # a burst within the window: listed, but no serial change yet
        record(store, T0 + 100 + i * 0.5, 0x5DB80001 + i, f"<b{i}>")
        assert store.serial(Z, T0 + 100 + i * 0.5) == first
    assert len(list(store.entries(Z))) == 5
    after = store.serial(Z, T0 + 100 + COALESCE_S)  # the window closes: one change for the burst
    assert after > first
    assert store.serial(Z, T0 + 200) == after  # and only one
    serials = [store.serial(Z, T0 + 100 + t / 4) for t in range(0, 400)]
    assert serials == sorted(serials)  # never goes back


def test_coalesced_serial_changes_at_most_once_per_window(store: Store) -> None:
    record(store, T0 + 100, 0x5DB80001, "<a>")
    changes = []
    previous = store.serial(Z, T0 + 100)
    for step in range(1, 200):  # a hit every 0.25 s for 50 s
        at = T0 + 100 + step / 4
        record(store, at, 0x5DB80001 + step, f"<m{step}>")
        serial = store.serial(Z, at)
        assert serial >= previous
        if serial != previous:
            changes.append(at)
        previous = serial
    gaps = [b - a for a, b in zip(changes, changes[1:], strict=False)]
    assert changes and min(gaps) >= COALESCE_S


def test_admin_writes_are_not_held_back_by_coalescing(store: Store) -> None:
    record(store, T0 + 100, 0x5DB80001, "<a>")
    record(store, T0 + 101, 0x5DB80002, "<b>")  # pending
    before = store.serial(Z, T0 + 101)
    store.add(Z, [listing("192.0.2.1")], source="manual", now=T0 + 102)
    assert store.serial(Z, T0 + 102) > before
    assert store.serial(Z, T0 + 200) == store.serial(Z, T0 + 102)  # the pending change was folded in


def test_prune_hits_forgets_old_evidence_only(store: Store) -> None:
    record(store, T0, 0x5DB80001, "<old>")
    record(store, T0 + 100 * 86400, 0x5DB80002, "<new>")
    assert store.prune_hits(T0 + 10 * 86400) == 1
    assert [h["message_id"] for h in store.hits(Z, "93.184.0.2")] == ["<new>"]
    assert store.hits(Z, "93.184.0.1") == []
