"""libp2p TLS certificates (libp2p/specs tls/tls.md) for the fast lane, sans-I/O.

A certificate is self-signed with a fresh key and carries extension 1.3.6.1.4.1.53594.1.1:
SignedKey{PublicKey (libp2p protobuf of the Ed25519 identity key), Signature (by that key)
over "libp2p-tls-handshake:" + the certificate's SubjectPublicKeyInfo}, so whoever holds
the certificate's key is the peer id it names. The clock is the caller's.
"""

from __future__ import annotations

import datetime
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from protocol.errors import BadSignature, Expired, MalformedMessage, ProtocolError
from protocol.identity import Identity, peer_id_from_public_key

EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
CERT_DAYS = 30
ED25519_PB = bytes([0x08, 0x01, 0x12, 0x20])  # protobuf PublicKey{Type: Ed25519, Data: 32 B}


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_take(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """One DER element of `tag` off the front of `data`: (its body, the rest)."""
    if len(data) < 2 or data[0] != tag:
        raise MalformedMessage("the certificate's libp2p key extension is not DER")
    n, at = data[1], 2
    if n & 0x80:
        width = n & 0x7F
        if not 1 <= width <= 2 or len(data) < 2 + width:
            raise MalformedMessage("the certificate's libp2p key extension is not DER")
        n, at = int.from_bytes(data[2:2 + width], "big"), 2 + width
    if len(data) < at + n:
        raise MalformedMessage("the certificate's libp2p key extension is truncated")
    return data[at:at + n], data[at + n:]


def signed_key(identity: Identity, spki: bytes) -> bytes:
    """The extension's value: SignedKey{PublicKey, Signature} as DER."""
    public = ED25519_PB + identity.public_key
    signature = identity.sign(SIGNATURE_PREFIX + spki)
    return _der(0x30, _der(0x04, public) + _der(0x04, signature))


def make_certificate(identity: Identity, *, now: datetime.datetime,
                     extension: bytes | None = None) -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for `identity`: (its DER, its key as PEM).
    `extension` replaces the SignedKey (tests build forged ones with it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    value = signed_key(identity, spki) if extension is None else extension
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8))])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=CERT_DAYS)))
    if value:
        builder = builder.add_extension(x509.UnrecognizedExtension(EXTENSION_OID, value),
                                        critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.DER), pem


def certificate_peer(der: bytes, *, now: datetime.datetime) -> str:
    """The peer id a certificate is bound to: MalformedMessage unless it parses and holds
    an Ed25519 SignedKey, Expired outside its validity, BadSignature unless the key signed
    this certificate's own public key."""
    try:
        cert = x509.load_der_x509_certificate(der)
        ext = cert.extensions.get_extension_for_oid(EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise MalformedMessage("the certificate carries no libp2p key extension") from None
    except ValueError as exc:
        raise MalformedMessage(f"the certificate does not parse: {exc}") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Expired("the certificate is outside its validity")
    value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    body, rest = _der_take(value, 0x30)
    public, body = _der_take(body, 0x04)
    signature, body = _der_take(body, 0x04)
    if rest or body or len(public) != 36 or not public.startswith(ED25519_PB):
        raise MalformedMessage("the certificate's key extension is not an Ed25519 SignedKey")
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        Ed25519PublicKey.from_public_bytes(public[4:]).verify(signature,
                                                              SIGNATURE_PREFIX + spki)
        return peer_id_from_public_key(public[4:])
    except (InvalidSignature, ValueError, ProtocolError):
        raise BadSignature("the certificate's key is not signed by its identity") from None
