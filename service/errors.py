"""The errors the service raises, each with its HTTP status as a property of the class.

Domain code (store, kinds, transforms) raises these; ``service.problems`` answers them, at the
edge, as RFC 9457 problem details.
"""

from __future__ import annotations

RETRY_AFTER_SECONDS = 1


class ServiceError(Exception):
    status = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnauthorizedError(ServiceError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ServiceError):
    status = 403


class NotFoundError(ServiceError):
    status = 404


class ConflictError(ServiceError):
    status = 409


class TooLargeError(ServiceError):
    status = 413


class UnprocessableError(ServiceError):
    status = 422


class TooManyRequestsError(ServiceError):
    status = 429

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_seconds)}


class CorruptStateError(ServiceError):
    """A session's stored state fails its integrity checks: the server's data is bad, not the request."""

    status = 500


class UnavailableError(ServiceError):
    status = 503
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
