"""What the client raises: every failure carries a stable ``code`` and a message for humans."""


class ClientError(Exception):
    """Root of the client's errors."""

    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ApiError(ClientError):
    """The API answered with an error body (``{"error": {"code", "message"}}``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class Unreachable(ClientError):
    """No answer from the server (refused, timed out, or dropped before any response)."""

    code = "unreachable"


class StreamLost(ClientError):
    """A stream could not be resumed within the retry budget; ``last_event_id`` says where
    to resume it later."""

    code = "stream_lost"

    def __init__(self, message: str, *, last_event_id: int | None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id
