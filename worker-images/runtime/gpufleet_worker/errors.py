"""The one exception type that becomes an error answer of the API."""

from __future__ import annotations

from .protocol import ErrorResponse, Reason

STATUS_CODES = {
    Reason.UNAUTHORIZED: 401,
    Reason.NOT_FOUND: 404,
    Reason.INSUFFICIENT_VRAM: 409,
    Reason.TOO_MANY_JOBS: 409,
    Reason.SPEC_MISMATCH: 409,
    Reason.INVALID_REQUEST: 422,
    Reason.UNKNOWN_MODEL: 422,
    Reason.MODEL_FAILED: 422,
    Reason.UNSUPPORTED_TASK: 422,
    Reason.UNSUPPORTED_OUTPUT: 422,
    Reason.REQUEST_TOO_LARGE: 413,
    Reason.NOT_READY: 503,
}


class Refusal(Exception):
    """A request the worker will not act on, with the reason and the numbers behind it."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        asked_bytes: int | None = None,
        free_bytes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.asked_bytes = asked_bytes
        self.free_bytes = free_bytes

    @property
    def status_code(self) -> int:
        return STATUS_CODES.get(self.reason, 500)

    def response(self) -> ErrorResponse:
        return ErrorResponse(
            reason=self.reason,
            message=self.message,
            asked_bytes=self.asked_bytes,
            free_bytes=self.free_bytes,
        )
