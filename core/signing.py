"""Signed snapshots: each snapshot's text as a JWS (RFC 7515, EdDSA).

With `[server] signing_key` (an Ed25519 private key in PEM; `python -m core
keygen FILE` writes one), a client that subscribes with `"signed": true`
gets each snapshot as a compact JWS whose payload is exactly the text other
clients get. The public key is served as a JWKS at `GET /api/keys`. PyJWT
signs and verifies; nothing here does cryptography by hand.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

# cryptography and PyJWT are imported where they are used: a config without
# a signing key never loads them.


def _jws() -> Any:
    from jwt.api_jws import PyJWS

    return PyJWS(algorithms=["EdDSA"])


class SignatureError(Exception):
    """A signed snapshot that does not verify: tampered, or signed by another key."""


def keygen(path: Path) -> Path:
    """Write a new Ed25519 private key (PEM, mode 0600) to `path`; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def load_signing_key(path: Path) -> Any:
    """The Ed25519 private key in a PEM file; ValueError says what is wrong."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"expected an Ed25519 private key in PEM (python -m core keygen "
                         f"FILE writes one): {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key (python -m core keygen FILE), "
                         f"got {type(key).__name__}")
    return key


class Signer:
    """Signs snapshot texts with one Ed25519 key; publishes its JWKS."""

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self.key = key
        public = key.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        #: The key id: the first 16 hex digits of the public key's SHA-256.
        self.kid = hashlib.sha256(raw).hexdigest()[:16]
        from jwt.algorithms import OKPAlgorithm

        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        self.jwks: dict[str, Any] = {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA",
                                               "use": "sig"}]}

    def sign(self, text: str) -> str:
        """The compact JWS of `text` (the payload is its UTF-8 bytes, unchanged)."""
        return _jws().encode(text.encode(), self.key, algorithm="EdDSA",
                             headers={"kid": self.kid})


def public_key_of(source: Any) -> Any:
    """A verification key (Ed25519) from a key object, a PEM path or bytes, or a JWKS dict."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source.public_key()
    if isinstance(source, dict):
        from jwt.algorithms import OKPAlgorithm

        keys = source.get("keys", [source])
        return OKPAlgorithm.from_jwk(keys[0])
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 key, got {type(key).__name__}")
    return key


def verify(token: str, key: Any) -> str:
    """The snapshot text inside a signed snapshot; SignatureError when it does not verify."""
    from jwt.exceptions import InvalidTokenError

    try:
        return _jws().decode(token, key, algorithms=["EdDSA"]).decode()
    except (InvalidTokenError, UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"signed snapshot refused: {exc}") from None
