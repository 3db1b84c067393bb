"""Who may write into the inbox: the static secret header and Standard Webhooks signatures.

Each format has a secret of its own (store.services.PIPELINE_SECRET and SIGNING_KEY), and each may
be rotating: the checks take the list of values currently accepted (the current secret, plus the
previous one until its rotation window ends) and match any of them.

Nothing here logs, raises with, or returns a secret: failures are a bare `Unauthorized`, and the
HTTP layer answers 401 without saying which check failed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


class Unauthorized(Exception):
    """Missing or wrong secret or signature; deliberately without detail."""


def is_signed(headers: Mapping[str, str]) -> bool:
    """Any Standard Webhooks header selects the signed format, so a signed request can never fall
    back to the weaker static-secret check."""
    return "webhook-signature" in headers or "webhook-id" in headers or "webhook-timestamp" in headers


def _digest(value: str) -> bytes:
    # Comparing fixed-size digests keeps compare_digest from leaking the secret's length.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def check_static_secret(presented: str | None, secrets: list[str]) -> None:
    """The Golioth pipeline path: the header must equal one of the secrets (constant time)."""
    if not presented or not secrets:
        raise Unauthorized
    presented_digest = _digest(presented)
    matched = False
    for secret in secrets:  # no early exit: every secret is compared on every request
        matched |= hmac.compare_digest(presented_digest, _digest(secret))
    if not matched:
        raise Unauthorized


@functools.lru_cache(maxsize=64)
def _webhook(secret: str) -> Webhook | None:
    try:
        return Webhook(secret)
    except Exception:  # not base64 / empty: this secret can't sign anything
        return None


def _presented_signatures(header: str) -> list[bytes]:
    out = []
    for part in header.split():
        version, _, encoded = part.partition(",")
        if version != "v1" or not encoded:
            continue  # unknown versions are skipped, as the spec asks
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    secrets: list[str],
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> str:
    """Check a Standard Webhooks delivery and return its `webhook-id`.

    The HMAC itself comes from the `standardwebhooks` package (`Webhook.sign`); this function adds
    what the package's `verify` can't: an injectable clock (so the tolerance edges are testable),
    several secrets, and one opaque failure for every reason.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signature_header = headers.get("webhook-signature")
    if not (msg_id and stamp and signature_header and secrets) or not _TIMESTAMP.match(stamp):
        raise Unauthorized
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise Unauthorized
    presented = _presented_signatures(signature_header)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unauthorized from None  # a signer signs text; undecodable bytes can't match
    if not presented:
        raise Unauthorized
    signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
    matched = False
    for secret in secrets:
        webhook = _webhook(secret)
        if webhook is None:
            continue
        expected = base64.b64decode(webhook.sign(msg_id, signed_at, text).partition(",")[2])
        for candidate in presented:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized
    return msg_id


def sign(body: bytes, msg_id: str, timestamp: int, secret: str) -> str:
    """A `webhook-signature` value for one secret: for tests, benchmarks and senders."""
    signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
    return Webhook(secret).sign(msg_id, signed_at, body.decode("utf-8"))
