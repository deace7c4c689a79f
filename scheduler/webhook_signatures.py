"""Signing webhook deliveries the Standard Webhooks way (https://www.standardwebhooks.com).

Receivers can then check them with any Standard Webhooks library, or with a few lines of
their own (README: Webhooks): the signature is the base64 of the HMAC-SHA256, keyed with
the base64-decoded part of the secret after ``whsec_``, of ``"{id}.{timestamp}.{body}"``.
The timestamp is signed so that a captured request cannot be replayed later; the id stays
the same on every retry so that receivers can drop a delivery they already handled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``"{message_id}.{timestamp}.{body}"``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers(
    secrets_in_use: list[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three headers of a delivery. Several secrets (during a rotation's grace period)
    give several signatures, separated by spaces: a receiver accepts any one it can check."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            signature(secret, message_id, timestamp, body) for secret in secrets_in_use
        ),
    }
