"""Compiled snapshots of IP datasets, cached beside their data files: a big list loads in milliseconds.

Owns the snapshot file: where it lives, its key, its format, and when it is trusted.

Rules:
- Where: `.<first file's name>.<kind>-<crc32 of the spec>.dnsbl-snapshot` in the first file's folder,
  written to a temp file there and moved into place with `os.replace` (a reader never sees half of one;
  two servers writing at once leave one whole snapshot).
- Key: the format version, the dataset kind, the `loose` flag, and per file its path (absolute, and as
  given: problems name it so), size, mtime_ns, ctime_ns and inode (a file replaced within one mtime
  tick still has a new inode or ctime). Any difference: the snapshot is not used; the files are parsed
  and the snapshot rewritten.
- Never pickle: a data folder may be writable by a feed, and loading must not run code from it. A JSON
  header (key, specials, problems, values, multi-listing answers, range counts, CRC32s) and raw columns.
- Not trusted blindly: magic, version, byte order, every length (against the file's size), the columns'
  CRC32 and every id are checked; anything wrong and it is ignored (debug log) and rebuilt. What a
  well-formed snapshot can do is what its data file can do: list addresses.
- Best effort: a folder we cannot write, a full disk: debug log, and the parse is served.
- Only datasets of at least `MIN_SIZE` bytes get one: small ones parse in milliseconds, and no dotfile
  appears beside every small file.
- The specials are kept as read (before `--ttl` bounds, applied at each load) and so are the problems
  (bad lines): `datafiles` logs them at every load, snapshot or not, as rbldnsd does at each load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import zlib
from array import array
from collections.abc import Sequence
from typing import Any, BinaryIO

from .compact import ID_TYPE, V4_TYPE, CompactIndex, Compiled, Ranges, column, read_compact
from .zonefile import Specials

log = logging.getLogger("dnsbl.snapshot")

MAGIC = b"dnsbl-snapshot\n"
FORMAT = 1
MIN_SIZE = 1 << 20  # bytes of data files: below this a parse takes well under 0.1 s
SUFFIX = ".dnsbl-snapshot"
V6_BYTES = 16
FAMILIES = (4, 6)
BAD_SNAPSHOT = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


class Stale(ValueError):
    """The snapshot is whole but for other files (or another version): not an error, rebuild."""


def load_ip(
    kind: str, files: Sequence[str], *, loose: bool = False, cache: bool = True, min_size: int = MIN_SIZE
) -> Compiled:
    """An IP dataset's compact index: from its snapshot when one matches, else parsed (and the snapshot
    written when `cache`). OSError: a file cannot be read."""
    key = key_of(kind, files, loose)
    if not cache or sum(f["size"] for f in key["files"]) < min_size:
        return read_compact(kind, files, loose=loose)
    path = snapshot_path(kind, files)
    found = read_snapshot(path, key)
    if found is not None:
        log.debug("%s: loaded", path)
        return found
    built = read_compact(kind, files, loose=loose)
    write_snapshot(path, key, built)
    return built


def key_of(kind: str, files: Sequence[str], loose: bool) -> dict[str, Any]:
    """What a snapshot must have been built from (JSON-shaped: compared with the stored key as is)."""
    stats = []
    for name in files:
        info = os.stat(name)
        stats.append(
            {
                "path": os.path.abspath(name),
                "given": name,  # as the problems name it
                "size": info.st_size,
                "mtime_ns": info.st_mtime_ns,
                "ctime_ns": info.st_ctime_ns,
                "inode": info.st_ino,
            }
        )
    return {"format": FORMAT, "kind": kind, "loose": loose, "files": stats}


def snapshot_path(kind: str, files: Sequence[str]) -> str:
    first = os.path.abspath(files[0])
    spec = zlib.crc32(json.dumps([kind, [os.path.abspath(f) for f in files]]).encode())
    folder, name = os.path.split(first)
    return os.path.join(folder, f".{name}.{kind}-{spec:08x}{SUFFIX}")


# --- writing ----------------------------------------------------------------------------------


def write_snapshot(path: str, key: dict[str, Any], compiled: Compiled) -> None:
    """Write it through a temp file beside; any OSError only skips the cache (debug log)."""
    import tempfile  # only a cold build writes: keep it off the start-up path

    folder, name = os.path.split(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=f"{name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        log.debug("%s: not written (%s)", path, error)
        return
    try:
        with os.fdopen(fd, "wb") as out:
            _write(out, key, compiled)
        os.chmod(temp, 0o644)  # readable as the data files usually are (mkstemp makes it 0600)
        os.replace(temp, path)
        log.debug("%s: written", path)
    except OSError as error:
        log.debug("%s: not written (%s)", path, error)
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _write(out: BinaryIO, key: dict[str, Any], compiled: Compiled) -> None:
    index = compiled.index
    bodies = {family: _body(family, index.segments[family]) for family in FAMILIES}
    header = {
        "key": key,
        "byteorder": sys.byteorder,
        "specials": _specials_out(compiled.specials),
        "problems": compiled.problems,
        "count": index.count,
        "codes": index.codes.tolist(),
        "texts": list(index.texts),
        "multi": [list(ids) for ids in index.multi],
        "ranges": {str(f): [len(index.segments[f]), _crc(bodies[f])] for f in FAMILIES},
    }
    data = json.dumps(header, separators=(",", ":")).encode()
    out.write(MAGIC + len(data).to_bytes(8, "big") + data)
    for family in FAMILIES:
        for part in bodies[family]:
            out.write(part)


def _body(family: int, ranges: Ranges) -> list[bytes | memoryview]:
    if family == 4:
        return [memoryview(ranges.starts), memoryview(ranges.ends), memoryview(ranges.rids)]
    starts = b"".join(v.to_bytes(V6_BYTES, "big") for v in ranges.starts)
    ends = b"".join(v.to_bytes(V6_BYTES, "big") for v in ranges.ends)
    return [starts, ends, memoryview(ranges.rids)]


def _crc(parts: list[bytes | memoryview]) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _specials_out(specials: Specials) -> dict[str, Any]:
    ns = None if specials.ns is None else [specials.ns[0], list(specials.ns[1])]
    soa = None if specials.soa is None else list(specials.soa)
    return {
        "soa": soa,
        "ns": ns,
        "ttl": specials.ttl,
        "timestamp": specials.timestamp,
        "expires": specials.expires,
    }


# --- reading ----------------------------------------------------------------------------------


def read_snapshot(path: str, key: dict[str, Any]) -> Compiled | None:
    """The snapshot at `path` if it is whole and built from `key`'s files; else None (debug log)."""
    try:
        with open(path, "rb") as data:
            return _read(data, key)
    except FileNotFoundError:
        return None
    except Stale as why:
        log.debug("%s: %s; rebuilding", path, why)
    except BAD_SNAPSHOT as error:
        log.debug("%s: unusable (%s: %s); rebuilding", path, type(error).__name__, error)
    return None


def _read(data: BinaryIO, key: dict[str, Any]) -> Compiled:
    size = os.fstat(data.fileno()).st_size
    if data.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a snapshot")
    length = int.from_bytes(_exactly(data, 8, size), "big")
    header = json.loads(_exactly(data, length, size))
    if header["key"] != key:
        raise Stale("built from other files")
    if header["byteorder"] != sys.byteorder or array(V4_TYPE).itemsize != 4 or array(ID_TYPE).itemsize != 4:
        raise Stale("built on another kind of machine")
    counts = {f: _count(header["ranges"][str(f)][0]) for f in FAMILIES}
    body = sum(n * (2 * (4 if f == 4 else V6_BYTES) + 4) for f, n in counts.items())
    if len(MAGIC) + 8 + length + body != size:
        raise ValueError(f"{size} bytes, not the {len(MAGIC) + 8 + length + body} its header says")
    segments = {f: _ranges(data, f, counts[f], header["ranges"][str(f)][1]) for f in FAMILIES}
    index = _index(header, key["kind"], segments)
    return Compiled(index, _specials_in(header["specials"]), _strings(header["problems"]))


def _exactly(data: BinaryIO, length: int, size: int) -> bytes:
    if length > size:
        raise ValueError("a length past the end of the file")
    chunk = data.read(length)
    if len(chunk) != length:
        raise EOFError("truncated")
    return chunk


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"bad range count {value!r}")
    return value


def _ranges(data: BinaryIO, family: int, n: int, crc: int) -> Ranges:
    width = 4 if family == 4 else V6_BYTES
    parts = [data.read(n * width), data.read(n * width), data.read(n * 4)]
    if _crc(list(parts)) != crc:
        raise ValueError(f"IPv{family} ranges: CRC mismatch")
    rids = array(ID_TYPE)
    rids.frombytes(parts[2])
    if family == 4:
        starts, ends = column(4), column(4)
        starts.frombytes(parts[0])
        ends.frombytes(parts[1])
        return Ranges(starts, ends, rids)
    return Ranges(_v6(parts[0]), _v6(parts[1]), rids)


def _v6(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + V6_BYTES], "big") for i in range(0, len(data), V6_BYTES)]


def _index(header: dict[str, Any], kind: str, segments: dict[int, Ranges]) -> CompactIndex:
    codes = array(V4_TYPE, header["codes"])  # OverflowError, TypeError: not 32-bit codes
    texts = _strings(header["texts"])
    if len(texts) != len(codes):
        raise ValueError("codes and texts differ in number")
    multi = tuple(tuple(_ids(ids, len(codes))) for ids in header["multi"])
    for ranges in segments.values():
        _ids(ranges.rids, len(codes) + len(multi))
    return CompactIndex(kind, segments, codes, tuple(texts), multi, _count(header["count"]))


def _ids(ids: Sequence[int], limit: int) -> Sequence[int]:
    if ids and not (min(ids) >= 0 and max(ids) < limit):
        raise ValueError("an id out of range")
    return ids


def _strings(values: list[Any]) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("expected a list of strings")
    return values


def _specials_in(raw: dict[str, Any]) -> Specials:
    soa, ns = raw["soa"], raw["ns"]
    if soa is not None and [type(v) for v in soa] != [int, str, str, int, int, int, int, int]:
        raise TypeError("bad $SOA")
    if ns is not None and not (type(ns[0]) is int and len(ns) == 2):
        raise TypeError("bad $NS")
    return Specials(
        soa=None if soa is None else tuple(soa),  # type: ignore[arg-type]
        ns=None if ns is None else (ns[0], tuple(_strings(ns[1]))),
        ttl=_optional(raw["ttl"], int),
        timestamp=_optional(raw["timestamp"], float),
        expires=_optional(raw["expires"], float),
    )


def _optional(value: Any, kind: type) -> Any:
    if value is None or (type(value) in (kind, int) and type(value) is not bool):
        return value
    raise TypeError(f"bad value {value!r}")
