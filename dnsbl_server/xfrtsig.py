"""TSIG (RFC 8945) for zone transfers: the one key an operator may require (`--tsig-key
NAME:ALGORITHM:BASE64`, config `tsig_key`), requests checked and replies signed with dnspython's
`dns.tsig` (the MAC arithmetic is not ours to write).

Rules:
- With a key set, a transfer request must carry a TSIG by that key that verifies: unsigned requests get
  REFUSED (policy, like a client outside --allow-transfer); a key name or algorithm we do not hold gets
  NOTAUTH with TSIG error BADKEY, a wrong MAC NOTAUTH/BADSIG, a time outside the fudge NOTAUTH/BADTIME,
  each with an unsigned TSIG record (RFC 8945 section 5.2); each is logged by the caller.
- Every message of a transfer is signed (section 5.3.1: the first over the request's MAC, each next one
  over the previous MAC), so a secondary can check each as it arrives.
- Without a key nothing here runs: transfers are restricted by address only.
"""

from __future__ import annotations

import base64
import binascii
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig

from .errors import ConfigError

FUDGE = 300  # seconds of clock difference accepted (RFC 8945 section 10: 300 recommended)
BADSIG, BADKEY, BADTIME = 16, 17, 18
NOTAUTH = 9
_HEADER_ARCOUNT = 10


def parse_key(spec: str, where: str = "--tsig-key") -> dns.tsig.Key:
    """`NAME:ALGORITHM:BASE64` (e.g. `xfr.example:hmac-sha256:c2VjcmV0...`); ConfigError names a bad one."""
    parts = spec.split(":")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"{where}: {spec!r}: expected NAME:ALGORITHM:BASE64")
    name, algorithm, secret = parts
    try:
        raw = base64.b64decode(secret, validate=True)
        key = dns.tsig.Key(name, raw, algorithm)
        dns.tsig.get_context(key)  # an algorithm dnspython does not know fails here, not at a transfer
    except (binascii.Error, ValueError) as error:
        raise ConfigError(f"{where}: {name}: the secret is not base64 ({error})") from None
    except (dns.exception.DNSException, NotImplementedError) as error:
        raise ConfigError(f"{where}: {name}: unknown algorithm {algorithm!r} ({error})") from None
    return key


class Unsigned(Exception):
    """The request carries no TSIG though a key is required."""


class Rejected(Exception):
    """The request's TSIG does not verify; `reply` is the NOTAUTH answer to send."""

    def __init__(self, why: str, reply: bytes) -> None:
        super().__init__(why)
        self.reply = reply


@dataclass
class Signer:
    """Signs the messages of one transfer in order (RFC 8945 section 5.3.1)."""

    key: dns.tsig.Key
    request_mac: bytes
    original_id: int
    ctx: object = field(default=None)

    def sign(self, message: bytes) -> bytes:
        rdata = _tsig_rdata(self.key.algorithm, self.original_id, 0, b"")
        signed, self.ctx = dns.tsig.sign(
            message, self.key, rdata, int(time.time()), self.request_mac, self.ctx, multi=True
        )
        return _append(message, self.key.name, signed)


def verify(data: bytes, key: dns.tsig.Key) -> Signer:
    """The signer of the reply to this request; Unsigned or Rejected."""

    def keyring(_message: dns.message.Message, name: dns.name.Name) -> dns.tsig.Key | None:
        return key if name == key.name else None

    try:
        request = dns.message.from_wire(data, keyring=keyring, question_only=False)
    except dns.message.UnknownTSIGKey:
        raise Rejected("unknown TSIG key", _error(data, BADKEY)) from None
    except (dns.tsig.BadKey, dns.tsig.BadAlgorithm):
        raise Rejected("TSIG key or algorithm mismatch", _error(data, BADKEY)) from None
    except dns.tsig.BadSignature:
        raise Rejected("bad TSIG signature", _error(data, BADSIG)) from None
    except dns.tsig.BadTime:
        raise Rejected("TSIG time outside the fudge", _error(data, BADTIME)) from None
    if not request.had_tsig:
        raise Unsigned("no TSIG")
    return Signer(key, request.mac, request.id)


def _error(data: bytes, error: int) -> bytes:
    """NOTAUTH with an unsigned TSIG record carrying `error` (RFC 8945 section 5.2), named and with the
    algorithm of the request's TSIG, so the client can tell which of its keys failed."""
    from .xfrwire import refusal

    try:
        request = dns.message.from_wire(data, keyring=lambda _m, _n: False)  # read, not verified
        name, algorithm = request.keyname or dns.name.root, request.keyalgorithm
    except dns.exception.DNSException:
        name, algorithm = dns.name.root, dns.tsig.default_algorithm
    now = int(time.time())
    other = struct.pack("!HI", now >> 32, now & 0xFFFFFFFF) if error == BADTIME else b""  # our time
    rdata = _tsig_rdata(algorithm, int.from_bytes(data[:2], "big"), error, other)
    return _append(refusal(data, NOTAUTH), name, rdata.replace(time_signed=now))


def _tsig_rdata(
    algorithm: dns.name.Name, original_id: int, error: int, other: bytes
) -> dns.rdtypes.ANY.TSIG.TSIG:
    return dns.rdtypes.ANY.TSIG.TSIG(
        dns.rdataclass.ANY, dns.rdatatype.TSIG, algorithm, 0, FUDGE, b"", original_id, error, other
    )


def _append(message: bytes, name: dns.name.Name, rdata: dns.rdtypes.ANY.TSIG.TSIG) -> bytes:
    """The message with the TSIG record added last in the additional section."""
    body = rdata.to_wire()
    assert body is not None
    record = (
        name.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(body)) + body
    )
    count = int.from_bytes(message[_HEADER_ARCOUNT : _HEADER_ARCOUNT + 2], "big") + 1
    return message[:_HEADER_ARCOUNT] + count.to_bytes(2, "big") + message[_HEADER_ARCOUNT + 2 :] + record
