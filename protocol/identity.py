"""Ed25519 keys and libp2p-compatible peer ids, computed without libp2p."""

from __future__ import annotations

import functools
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from protocol.errors import BadSignature, InvalidMessage, MalformedMessage

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
# identity multihash (0x00, len 36) of the protobuf PublicKey{Type: Ed25519, Data: 32 bytes}
_PEER_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise MalformedMessage(f"invalid base58 character {c!r}")
        n = n * 58 + _B58_INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


class Identity:
    """A node's signing key; its peer id is the libp2p id of the same key."""

    __slots__ = ("_key", "peer_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise InvalidMessage("an Ed25519 seed is exactly 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        key = Ed25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @property
    def seed(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def peer_id_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise InvalidMessage("an Ed25519 public key is exactly 32 bytes")
    if not is_strong_public_key(public_key):
        raise InvalidMessage("not a usable Ed25519 public key (non-canonical or small order)")
    return b58encode(_PEER_PREFIX + public_key)


_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def is_strong_public_key(public_key: bytes) -> bool:
    """A canonical encoding of a curve point whose order is not small (RFC 8032 5.1.3).

    Small-order keys have no secret behind them: signatures "by" them can be forged.
    """
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _P:
        return False
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        x = (x * _SQRT_M1) % _P
        if (v * x * x - u) % _P != 0:
            return False
    if x == 0 and public_key[31] >> 7:
        return False
    # [8]P by three doublings in extended coordinates; small order iff it is the identity
    px, py, pz = x, y, 1
    for _ in range(3):
        a, b = px * px % _P, py * py % _P
        c = 2 * pz * pz % _P
        h = a + b
        e = (h - (px + py) ** 2) % _P
        g = (a - b) % _P
        f = (c + g) % _P
        px, py, pz = e * f % _P, g * h % _P, f * g % _P
    return px != 0 or py != pz


@functools.lru_cache(maxsize=4096)  # a pure function; checking a key costs ~0.5 ms
def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 key inlined in a peer id; MalformedMessage for any other kind of id."""
    if not 40 <= len(peer_id) <= 60:
        raise MalformedMessage("peer id has the wrong length for an Ed25519 id")
    raw = b58decode(peer_id)
    if len(raw) != 38 or not raw.startswith(_PEER_PREFIX):
        raise MalformedMessage("peer id is not an inline Ed25519 libp2p id")
    key = raw[len(_PEER_PREFIX):]
    if not is_strong_public_key(key):
        raise MalformedMessage("peer id holds a small-order or non-canonical Ed25519 key")
    return key


def verify(peer_id: str, data: bytes, signature: bytes) -> None:
    """Raise BadSignature unless `signature` over `data` was made by `peer_id`'s key."""
    key = Ed25519PublicKey.from_public_bytes(public_key_from_peer_id(peer_id))
    try:
        key.verify(signature, data)
    except InvalidSignature as exc:
        raise BadSignature(f"signature does not verify for {peer_id}") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
