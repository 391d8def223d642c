"""Standard Webhooks signatures (https://www.standardwebhooks.com).

`webhook-signature` is `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
where the key is the base64 part of a `whsec_` secret, decoded. Several
space-separated signatures are sent while a rotated-out secret is still in
its grace period, so receivers can switch secrets without dropping a message.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass

from app.db.base import as_utc

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (its base64 part, decoded)."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    # Tolerate unpadded base64, as the reference libraries do.
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    signed = f"{webhook_id}.{timestamp}.{body}".encode("utf-8")
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class SigningSecrets:
    current: str
    previous: str | None = None
    rotated_at: dt.datetime | None = None

    def active(self, now: dt.datetime, grace_s: float) -> list[str]:
        """The secrets to sign with at `now`: the current one, and the
        previous one until the grace period after the rotation ends."""
        rotated_at = as_utc(self.rotated_at)
        in_grace = (self.previous is not None and rotated_at is not None
                    and now < rotated_at + dt.timedelta(seconds=grace_s))
        return [self.current, self.previous] if in_grace else [self.current]


def signed_headers(secrets: list[str], webhook_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets),
    }
