"""Golioth Management API client: httpx, pydantic models from the spec, typed errors, retries."""

from .client import DEFAULT_TIMEOUT, DeviceListing, GoliothClient, NameMap
from .errors import (
    AlreadyExistsError,
    AuthenticationError,
    BatchAborted,
    ConfigurationError,
    GoliothError,
    InconsistentListingError,
    InvalidArgumentError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    RetryBudgetExceeded,
    ServerError,
    TransportError,
)
from .models import (
    Blueprint,
    Cohort,
    Device,
    DeviceCreate,
    DeviceMetadata,
    DeviceUpdate,
    ListPage,
    RpcStatus,
    SettingsStatus,
    Tag,
)
from .retry import RetryPolicy
from .stats import ClientStats

__all__ = [
    "DEFAULT_TIMEOUT",
    "GoliothClient",
    "DeviceListing",
    "NameMap",
    "RetryPolicy",
    "ClientStats",
    "GoliothError",
    "AuthenticationError",
    "NotFoundError",
    "AlreadyExistsError",
    "InvalidArgumentError",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "RetryBudgetExceeded",
    "ConfigurationError",
    "BatchAborted",
    "InconsistentListingError",
    "InvalidResponseError",
    "Device",
    "DeviceMetadata",
    "SettingsStatus",
    "DeviceCreate",
    "DeviceUpdate",
    "Tag",
    "Blueprint",
    "Cohort",
    "ListPage",
    "RpcStatus",
]
