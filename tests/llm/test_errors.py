"""The provider error table: stable codes, retryable flags, no secrets in messages."""

import aiohttp
import pytest

from kgents.llm import errors


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "provider_bad_request"),
        (401, "provider_auth_failed"),
        (403, "provider_auth_failed"),
        (404, "provider_bad_request"),
        (408, "provider_timeout"),
        (422, "provider_bad_request"),
        (429, "provider_rate_limited"),
        (500, "provider_unavailable"),
        (502, "provider_unavailable"),
        (503, "provider_unavailable"),
        (529, "provider_unavailable"),
        (302, "provider_error"),
    ],
)
def test_status_codes(status: int, code: str) -> None:
    assert errors.code_for_status(status) == code


def test_only_transient_failures_are_retryable() -> None:
    assert errors.RETRYABLE_CODES == {
        "provider_unreachable",
        "provider_timeout",
        "provider_rate_limited",
        "provider_unavailable",
    }
    assert errors.provider_error("provider_timeout", "x").retryable is True
    assert errors.provider_error("provider_bad_request", "x").retryable is False


def test_auth_failures_carry_no_provider_text() -> None:
    error = errors.from_status("openai", 401, "Incorrect API key provided: sk-abc...xyz")

    assert error.code == "provider_auth_failed"
    assert "sk-" not in error.message


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("overloaded_error", "provider_unavailable"),
        ("rate_limit_error", "provider_rate_limited"),
        ("invalid_request_error", "provider_bad_request"),
        ("something_new", "provider_error"),
        (None, "provider_error"),
    ],
)
def test_error_events_inside_a_stream(error_type: str | None, code: str) -> None:
    assert errors.from_error_event("anthropic", error_type, None).code == code


def test_redact_removes_the_secret_and_caps_the_length() -> None:
    secret = "sk-live-abcdefghijklmnop"

    assert errors.redact(f"bad key {secret}!", secret) == "bad key [redacted]!"
    assert len(errors.redact("x" * 5000, secret) or "") <= 300
    assert errors.redact("", secret) is None


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"type": "rate_limit_error", "message": "slow down"}},
        {"type": "rate_limit_error", "message": "slow down"},
    ],
)
def test_error_fields_reads_both_body_shapes(body: object) -> None:
    assert errors.error_fields(body) == ("rate_limit_error", "slow down")


def test_error_fields_tolerates_anything_else() -> None:
    assert errors.error_fields("Internal Server Error") == (None, None)
    assert errors.error_fields({"error": "nope"}) == (None, None)


class _Timeout(Exception):
    pass


class _Connection(Exception):
    pass


class _Status(Exception):
    def __init__(self, status_code: int, body: object) -> None:
        super().__init__("status")
        self.status_code = status_code
        self.body = body


_SDK = errors.SDKErrors(timeout=_Timeout, connection=_Connection, status=_Status)


@pytest.mark.parametrize(
    ("exc", "started", "code"),
    [
        (_Timeout(), False, "provider_timeout"),
        (_Connection(), False, "provider_unreachable"),
        (_Connection(), True, "provider_error"),
        (_Status(503, {"error": {"message": "down"}}), False, "provider_unavailable"),
        # An error event inside a stream whose status was 200: its type decides.
        (_Status(200, {"error": {"type": "rate_limit_error"}}), True, "provider_rate_limited"),
        (ValueError("garbled"), True, "provider_error"),
    ],
)
def test_sdk_exceptions_map_to_the_table(exc: Exception, started: bool, code: str) -> None:
    assert errors.from_exception("p", exc, started=started, secret="k", sdk=_SDK).code == code


def test_sdk_exception_details_are_redacted() -> None:
    exc = _Status(400, {"error": {"message": "bad key sk-secret"}})

    error = errors.from_exception("p", exc, started=False, secret="sk-secret", sdk=_SDK)

    assert "sk-secret" not in error.message
    assert "[redacted]" in error.message


def _caused_by(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "started", "code"),
    [
        # The openai SDK's aiohttp transport wraps every lost connection as a connect timeout.
        (_caused_by(_Timeout(), aiohttp.ServerDisconnectedError()), False, "provider_unreachable"),
        (_caused_by(_Timeout(), aiohttp.ServerDisconnectedError()), True, "provider_error"),
        (_caused_by(_Timeout(), aiohttp.SocketTimeoutError()), True, "provider_timeout"),
        (aiohttp.ClientPayloadError("cut"), True, "provider_error"),
    ],
)
def test_the_aiohttp_error_under_the_sdk_decides(exc: Exception, started: bool, code: str) -> None:
    assert errors.from_exception("p", exc, started=started, secret="k", sdk=_SDK).code == code
