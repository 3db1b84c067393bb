"""Where secrets may come from, how strong they must be, and where the API key may be sent.

One rule for every front end (CLI, console, Python API) and for every reader at run time (a sync's
Golioth client, the webhook receiver), so that no setting can make golioth-sync read an arbitrary
variable of its own process and send it somewhere:

- A service names its secrets by NAME. A name must start with `GOLIOTH_` and be upper case, and
  the `GOLIOTH_SYNC_` namespace (golioth-sync's own settings: the console token, the Dagster
  database URL, …) and any name containing `DATABASE_URL` can never be chosen. So `HOME`, `PATH`,
  `DATABASE_URL` or `GOLIOTH_SYNC_CONSOLE_TOKEN` are refused, whatever they hold.
- A name is read from the environment, else from the file `$GOLIOTH_SYNC_HOME/secrets/<NAME>`, which
  must be a regular file owned by this user and readable by nobody else, in a folder nobody else can
  write to (what Docker and Kubernetes secret mounts give with mode 0400).
- Webhook secrets must be strong: a pipeline secret is at least 32 printable characters with at
  least 80 bits of estimated entropy, and is never a `whsec_` key; a Standard Webhooks signing key
  is `whsec_` + base64 of 24 to 64 random bytes. A weak value is treated as no value.
- The API key only goes to an https:// base URL; plain http:// only to a loopback address, and only
  when the process says so with GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP=1 (the simulator, the demo, tests).

Nothing here returns, logs or raises with a secret value: problems are described in words.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import math
import os
import re
import stat
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

SECRET_PREFIX = "GOLIOTH_"
RESERVED_PREFIX = "GOLIOTH_SYNC_"
ALLOW_LOOPBACK_HTTP_ENV = "GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP"
SECRETS_FOLDER = "secrets"
SIGNING_KEY_PREFIX = "whsec_"

MIN_SECRET_LENGTH = 32
MIN_SECRET_BITS = 80.0
SIGNING_KEY_BYTES = (24, 64)
MAX_SECRET_FILE_BYTES = 4096

_NAME = re.compile(r"^GOLIOTH_[A-Z0-9_]{1,120}$")
_SHAPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class SecretRefused(ValueError):
    """A name outside the allow-list, or a secrets file others could read or replace."""


# -- names ---------------------------------------------------------------------------------------------


def is_name_shaped(value: str) -> bool:
    """Could this be an environment variable name at all (whatever the allow-list says)?"""
    return bool(_SHAPE.match(value))


def name_problem(name: str) -> str | None:
    """Why `name` may not hold a service's secret, in words that never repeat it; None when it may."""
    if not _NAME.match(name):
        return f"must be an upper-case variable name starting with {SECRET_PREFIX} (like GOLIOTH_API_KEY)"
    if name.startswith(RESERVED_PREFIX) or "DATABASE_URL" in name:
        return f"names starting with {RESERVED_PREFIX} or containing DATABASE_URL are golioth-sync's own settings"
    return None


# -- reading -------------------------------------------------------------------------------------------


def secrets_dir() -> Path:
    from golioth_assets.settings import get_settings

    return get_settings().home / SECRETS_FOLDER


def _private(info: os.stat_result, *, folder: bool) -> bool:
    others = 0o022 if folder else 0o077  # a folder: nobody else writes; a file: nobody else reads
    return info.st_uid == os.geteuid() and not info.st_mode & others


def _read_file(name: str) -> str | None:
    folder = secrets_dir()
    path = folder / name
    try:
        info = path.stat()  # follows the symlinks a Kubernetes secret mount is made of
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SECRET_FILE_BYTES:
        raise SecretRefused(f"{path} is not a small regular file")
    if not _private(info, folder=False) or not _private(folder.stat(), folder=True):
        raise SecretRefused(
            f"{path} must be owned by this user and readable by nobody else (chmod 600), "
            f"in a folder nobody else can write to (chmod 700 {folder})"
        )
    return path.read_text("utf-8").strip() or None


def read_secret(name: str) -> str | None:
    """The value a service's secret name stands for, or None when it is not set anywhere.

    Raises SecretRefused for a name outside the allow-list: such a name is never read, so no
    setting can make golioth-sync hand out its own token or database password."""
    problem = name_problem(name)
    if problem:
        raise SecretRefused(f"a secret's variable name {problem}")
    return os.environ.get(name) or _read_file(name)


def secret_is_set(name: str) -> bool:
    try:
        return read_secret(name) is not None
    except SecretRefused:
        return False


# -- strength ------------------------------------------------------------------------------------------


def entropy_bits(symbols: bytes | str) -> float:
    """Shannon entropy of the symbol frequencies times the length: repeated characters and small
    alphabets score low; it can't tell a random string from a well-spread pattern."""
    if not symbols:
        return 0.0
    n = len(symbols)
    per_symbol = -sum(c / n * math.log2(c / n) for c in Counter(symbols).values())
    return per_symbol * n


# Cached: the receiver judges the same few values on every request.
@functools.lru_cache(maxsize=128)
def pipeline_secret_problem(value: str) -> str | None:
    """Why `value` is too weak for the static header secret of Golioth pipelines; None when it is fine."""
    if value.startswith(SIGNING_KEY_PREFIX):
        return "a pipeline secret travels in clear in every delivery, so it must not be a whsec_ signing key"
    if len(value) < MIN_SECRET_LENGTH or not _PRINTABLE.match(value):
        return f"a pipeline secret must be at least {MIN_SECRET_LENGTH} printable characters without spaces"
    if entropy_bits(value) < MIN_SECRET_BITS:
        return "a pipeline secret must be random (too few distinct characters): try `openssl rand -hex 32`"
    return None


@functools.lru_cache(maxsize=128)
def signing_key_problem(value: str) -> str | None:
    """Why `value` is not a usable Standard Webhooks signing key; None when it is one."""
    encoded = value.removeprefix(SIGNING_KEY_PREFIX)
    low, high = SIGNING_KEY_BYTES
    explain = f"a signing key must be whsec_ followed by the base64 of {low} to {high} random bytes"
    if encoded == value or not _BASE64.match(encoded):
        return explain
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return explain
    if not low <= len(key) <= high:
        return explain
    if entropy_bits(key) < MIN_SECRET_BITS:
        return "a signing key must be random bytes (too few distinct bytes)"
    return None


# -- where the API key may go --------------------------------------------------------------------------


def loopback_http_allowed() -> bool:
    return os.environ.get(ALLOW_LOOPBACK_HTTP_ENV, "").strip() == "1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_problem(url: str) -> str | None:
    """Why the API key must not be sent to `url`; None when it may."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "base_url is not a valid URL"
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return "base_url needs a host and no user or password in it"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        if loopback_http_allowed():
            return None
        return f"base_url may be http:// on a loopback address only with {ALLOW_LOOPBACK_HTTP_ENV}=1 (the simulator)"
    return f"base_url must start with https:// (http:// only to loopback, with {ALLOW_LOOPBACK_HTTP_ENV}=1)"


__all__ = [
    "ALLOW_LOOPBACK_HTTP_ENV",
    "SecretRefused",
    "base_url_problem",
    "entropy_bits",
    "is_name_shaped",
    "name_problem",
    "pipeline_secret_problem",
    "read_secret",
    "secret_is_set",
    "secrets_dir",
    "signing_key_problem",
]
