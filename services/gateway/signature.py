"""Standard Webhooks signatures (pure): `webhook-id`, `webhook-timestamp`, `webhook-signature`.

signature = base64(HMAC-SHA256(secret bytes, "{id}.{timestamp}.{body}")), the secret given as
`whsec_<base64>`; the header holds one or more space-separated `v1,<signature>` entries (several
during a secret rotation). A timestamp further than the tolerance from now, in either
direction, is refused, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

PREFIX = "whsec_"
MAX_TIMESTAMP = 10**12  # seconds: past anything real, and safe to subtract from a float


class SignatureError(ValueError):
    """The request is not signed by the source's secret (or is outside the replay window)."""


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret; ValueError if it is not base64."""
    encoded = secret.removeprefix(PREFIX).strip()
    encoded += "=" * (-len(encoded) % 4)  # secrets are often given without base64 padding
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature entry for a message (used by senders and tests)."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    tolerance_seconds: int,
) -> tuple[str, int]:
    """Check the signature headers against `body`; returns (webhook id, timestamp)."""
    webhook_id = headers.get("webhook-id", "").strip()
    raw_timestamp = headers.get("webhook-timestamp", "").strip()
    signatures = headers.get("webhook-signature", "").strip()
    for name, value in (
        ("webhook-id", webhook_id),
        ("webhook-timestamp", raw_timestamp),
        ("webhook-signature", signatures),
    ):
        if not value:
            raise SignatureError(f"missing header {name}")
    if len(webhook_id) > 200:
        raise SignatureError("webhook-id is longer than 200 characters")
    try:
        timestamp = int(raw_timestamp)
    except ValueError as exc:
        raise SignatureError("webhook-timestamp is not whole seconds since the epoch") from exc
    if abs(timestamp) > MAX_TIMESTAMP:
        raise SignatureError("webhook-timestamp is not a time")
    skew = now.timestamp() - timestamp
    if abs(skew) > tolerance_seconds:
        direction = "old" if skew > 0 else "far in the future"
        raise SignatureError(
            f"webhook-timestamp is too {direction} ({abs(skew):.0f} s; "
            f"the replay window is {tolerance_seconds} s)"
        )
    expected = sign(secret, webhook_id, timestamp, body).encode()
    for entry in signatures.split():
        version, _, _signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(entry.encode(), expected):
            return webhook_id, timestamp
    raise SignatureError("webhook-signature does not match the body and the source's secret")
