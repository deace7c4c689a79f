"""Manage links: unguessable, signed, revocable tokens for people without an account.

A token is ``<registration id>.<signature>``, the signature an HMAC of the id and the
registration's nonce. Giving the registration a new nonce revokes every link mailed before.
A forged token fails the HMAC check before any lookup tells whether the id exists.
Other kinds of link (deadline subscriptions) sign with their own ``purpose`` prefix, so a
token made for one kind of row can never open a row of another kind with the same id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign(registration_id: int, nonce: str, secret: bytes, purpose: str = "") -> str:
    message = f"{purpose}{registration_id}:{nonce}".encode()
    mac = hmac.new(secret, message, hashlib.sha256).digest()
    return f"{registration_id}.{base64.urlsafe_b64encode(mac[:24]).decode().rstrip('=')}"


# The largest id an integer column holds (PostgreSQL refuses to even look up a larger one).
MAX_ID = 2**31 - 1


def registration_id_of(token: str) -> int | None:
    """The id a token claims to be for (unverified), or None if it is not even shaped right."""
    head, sep, tail = token.partition(".")
    if not sep or not head.isascii() or not head.isdigit() or len(head) > 12 or len(tail) != 32:
        return None
    registration_id = int(head)
    return registration_id if registration_id <= MAX_ID else None


def verify(token: str, nonce: str, secret: bytes, purpose: str = "") -> bool:
    registration_id = registration_id_of(token)
    if registration_id is None:
        return False
    return hmac.compare_digest(sign(registration_id, nonce, secret, purpose), token)


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The configured key, or a random one kept in data_dir/secret_key (created once)."""
    if configured:
        return configured.encode("utf-8")
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32), encoding="utf-8")
    return path.read_text(encoding="utf-8").strip().encode("utf-8")
