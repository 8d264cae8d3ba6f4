"""UDP in batches: many datagrams per system call (Linux's recvmmsg and sendmmsg, called through ctypes).

Why: per UDP query, the event loop's datagram endpoint makes two system calls (recvfrom, sendto) and
builds the peer's address, which together cost about as much as answering. Under load many queries wait
in the socket: one recvmmsg takes up to BATCH of them and one sendmmsg sends their answers, in the order
they came. Answering stays in `server.UdpProtocol.reply`, the same for both ways in.

Rules: the socket is read only while the loop says it is readable, and at most ROUNDS batches at a time,
so TCP and timers get their turn. A query whose answering raises is logged and dropped, and the rest of
its batch is answered. Answers the kernel will not take now (a full send buffer) are dropped, as
rbldnsd drops them, and the resolver asks again (the loop's datagram endpoint would queue them in
memory). Where libc has no recvmmsg (not Linux), `available()` is False and the server uses the event
loop's datagram endpoint.

The buffers are anonymous mmaps: a slot per datagram of the largest size UDP carries, but only the pages
a datagram touches become memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import socket
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

log = logging.getLogger("dnsbl.server")

BATCH = 64  # datagrams per system call
ROUNDS = 4  # batches read per readable event before the loop runs other work
SLOT = 65536  # bytes per datagram buffer: any UDP payload fits, so none is ever cut short
NAME = 28  # bytes per peer address: a sockaddr_in6, the larger of the two families
ADDRESSES = 4096  # peer addresses kept decoded, then forgotten all at once
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)  # Linux's value where the socket module has none
_AGAIN = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}

Answer = Callable[[bytes, tuple[Any, ...]], "bytes | None"]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]  # fmt: skip


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


# The headers are read and written through a memoryview of 32-bit words (faster than ctypes fields):
# these are the word offsets of the fields used per datagram, taken from the ctypes layout above.
_WORDS = ctypes.sizeof(_Mmsghdr) // 4
_NAMELEN = _Msghdr.namelen.offset // 4
_LEN = _Mmsghdr.len.offset // 4
_NAME_PTR = _Msghdr.name.offset // 8  # in 64-bit words (a pointer)
_IOV_LEN = _Iovec.len.offset // 8


@cache
def _calls() -> tuple[Any, Any] | None:
    """libc's recvmmsg and sendmmsg, or None where there are none (or pointers are not 64-bit)."""
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(_Mmsghdr) % 8:
        return None
    try:
        # the process's own symbols, libc's among them: no library search (find_library runs ldconfig)
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.restype = send.restype = ctypes.c_int
    return recv, send


def available() -> bool:
    return _calls() is not None


def peer(raw: bytes) -> tuple[Any, ...]:
    """A sockaddr as the socket module gives it: (host, port) for IPv4, (host, port, flowinfo,
    scope_id) for IPv6, but a link-local host without its "%interface" (which `client_address` drops
    anyway). The family and the scope are in the host's byte order, the rest in network order."""
    port = int.from_bytes(raw[2:4], "big")
    if len(raw) >= NAME and int.from_bytes(raw[0:2], sys.byteorder) == socket.AF_INET6:
        flow, scope = int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class _Headers:
    """BATCH mmsghdrs, each with one iovec onto its own SLOT of `buffer` and, if `names`, a NAME-byte
    peer address of its own (the outgoing headers point at the incoming ones' peers instead)."""

    def __init__(self, names: bool) -> None:
        self.buffer = mmap.mmap(-1, BATCH * SLOT)
        self.names = mmap.mmap(-1, BATCH * NAME if names else 1)
        self.iovs = (_Iovec * BATCH)()
        self.headers = (_Mmsghdr * BATCH)()
        data, name = _address(self.buffer), _address(self.names)
        for i in range(BATCH):
            self.iovs[i].base, self.iovs[i].len = data + i * SLOT, SLOT
            self.headers[i].hdr.iov, self.headers[i].hdr.iovlen = ctypes.addressof(self.iovs[i]), 1
            if names:
                self.headers[i].hdr.name, self.headers[i].hdr.namelen = name + i * NAME, NAME
        self.pointer = ctypes.addressof(self.headers)
        self.words = memoryview(self.headers).cast("B").cast("I")
        self.pointers = memoryview(self.headers).cast("B").cast("Q")
        self.lengths = memoryview(self.iovs).cast("B").cast("Q")
        self.data = memoryview(self.buffer)
        self.name_base = name


def _address(region: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(region))


class BatchReader:
    """Serves one UDP socket on the running loop: `answer(query, peer)` gives each datagram's reply,
    or None for none."""

    def __init__(self, sock: socket.socket, answer: Answer) -> None:
        calls = _calls()
        if calls is None:
            raise OSError("recvmmsg is not available here")
        self._recv, self._send = calls
        self.sock = sock
        self.fd = sock.fileno()
        self.answer = answer
        self.incoming = _Headers(names=True)
        self.outgoing = _Headers(names=False)
        self.peers: dict[bytes, tuple[Any, ...]] = {}
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self.readable)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close()

    def readable(self) -> None:
        for _ in range(ROUNDS):
            got = self._recv(self.fd, self.incoming.pointer, BATCH, MSG_DONTWAIT, None)
            if got < 0:
                self._failed("recvmmsg")
                return
            self._flush(self._answer_all(got))
            if got < BATCH:
                return

    def _answer_all(self, got: int) -> int:
        """Answers the first `got` datagrams into the outgoing headers; returns how many to send."""
        incoming, outgoing, answer, peers = self.incoming, self.outgoing, self.answer, self.peers
        words, data, names, name_base = incoming.words, incoming.data, incoming.names, incoming.name_base
        out_words, out_pointers, out_lengths, out_data = (
            outgoing.words, outgoing.pointers, outgoing.lengths, outgoing.data
        )  # fmt: skip
        count = 0
        for i in range(got):
            at = i * _WORDS
            namelen = words[at + _NAMELEN]
            words[at + _NAMELEN] = NAME  # value-result: the next call needs the full size again
            raw = names[i * NAME : i * NAME + namelen]
            address = peers.get(raw)
            if address is None:
                if len(peers) >= ADDRESSES:
                    peers.clear()
                address = peers[raw] = peer(raw)
            try:
                reply = answer(data[i * SLOT : i * SLOT + words[at + _LEN]].tobytes(), address)
            except Exception:
                log.exception("error answering a UDP query from %s", address[0])
                continue
            if reply is None:
                continue
            size = len(reply)
            out_data[count * SLOT : count * SLOT + size] = reply
            out_lengths[count * 2 + _IOV_LEN] = size
            out_pointers[count * (_WORDS // 2) + _NAME_PTR] = name_base + i * NAME
            out_words[count * _WORDS + _NAMELEN] = namelen
            count += 1
        return count

    def _flush(self, count: int) -> None:
        """Sends the first `count` outgoing datagrams; skips one the kernel refuses (a peer address
        it will not send to, a datagram too big), drops the rest if the send buffer is full."""
        start = 0
        while start < count:
            sent = self._send(
                self.fd, self.outgoing.pointer + start * _WORDS * 4, count - start, MSG_DONTWAIT
            )
            if sent >= 0:
                start += sent
            elif ctypes.get_errno() in _AGAIN:
                return
            else:
                self._failed("sendmmsg")
                start += 1

    def _failed(self, call: str) -> None:
        number = ctypes.get_errno()
        if number not in _AGAIN:
            log.debug("udp error: %s: %s", call, errno.errorcode.get(number, number))
