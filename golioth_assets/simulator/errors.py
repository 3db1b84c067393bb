"""gRPC-gateway style errors, as the real Golioth API returns them.

Every error body is `{code, message, details: []}` where `code` is the gRPC status code,
and the HTTP status is the gateway's mapping of that code.
"""

from __future__ import annotations

import json

INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

HTTP_STATUS = {
    INVALID_ARGUMENT: 400,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    UNAUTHENTICATED: 401,
}

# Messages observed on the live API; clients match on some of them.
MSG_UNAUTHENTICATED = "error identifying user"
MSG_PERMISSION_DENIED = "user not allowed to call method"
MSG_BAD_OBJECT_ID = "hex string is not a valid ObjectID"


class ApiError(Exception):
    """Raised anywhere in the simulator to answer the current request with an rpcStatus."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message, "details": []}, separators=(",", ":")).encode()


def invalid(message: str) -> ApiError:
    return ApiError(INVALID_ARGUMENT, message)


def not_found(message: str) -> ApiError:
    return ApiError(NOT_FOUND, message)


def already_exists(message: str) -> ApiError:
    return ApiError(ALREADY_EXISTS, message)
