"""How provider failures become ``ProviderError``: one table of stable codes for every provider.

code                    when                                                          retryable
provider_unreachable    connection refused, DNS or TLS failure before a response      yes
provider_timeout        connect or read timeout (also HTTP 408), even mid-stream      yes
provider_rate_limited   HTTP 429, or a rate-limit error event inside the stream       yes
provider_unavailable    HTTP 5xx (529 overloaded too), or an overloaded/server error  yes
                        event inside the stream
provider_auth_failed    HTTP 401 or 403                                               no
provider_bad_request    any other HTTP 4xx                                            no
provider_error          anything else: malformed or truncated stream, connection      no
                        lost after the reply started

Messages never carry the API key: text supplied by the provider is redacted against the key and
cut short, and auth failures carry no provider text at all (providers echo parts of keys there).

``from_exception`` applies the table to what the official SDKs (and the transport under them)
raise; the SDKs are not imported here, each provider names its own exception classes
(``SDKErrors``), so choosing one provider never imports the other's SDK. The transport is aiohttp
under the SDKs' httpx2 client: its errors reach us wrapped in httpx2's and the SDK's, and the
openai SDK's wrapping calls every lost connection a connect timeout, so when an aiohttp error is
the root cause, it decides.
"""

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import httpx2

from kgents.errors import ProviderError

UNREACHABLE = "provider_unreachable"
TIMEOUT = "provider_timeout"
RATE_LIMITED = "provider_rate_limited"
UNAVAILABLE = "provider_unavailable"
AUTH_FAILED = "provider_auth_failed"
BAD_REQUEST = "provider_bad_request"
FAILED = "provider_error"

RETRYABLE_CODES = frozenset({UNREACHABLE, TIMEOUT, RATE_LIMITED, UNAVAILABLE})

# Error ``type`` values that OpenAI-compatible servers and Anthropic put in error bodies and in
# error events sent inside a stream (where the HTTP status is already 200).
_TYPE_CODES = {
    "rate_limit_error": RATE_LIMITED,
    "rate_limit_exceeded": RATE_LIMITED,
    "overloaded_error": UNAVAILABLE,
    "api_error": UNAVAILABLE,
    "server_error": UNAVAILABLE,
    "authentication_error": AUTH_FAILED,
    "permission_error": AUTH_FAILED,
    "invalid_request_error": BAD_REQUEST,
}

_MAX_DETAIL_CHARS = 300
_MAX_CAUSES = 8

TRANSPORT_ERRORS = (httpx2.TransportError, aiohttp.ClientError, ssl.SSLError)
"""What the transport raises when a connection fails or drops."""


@dataclass(frozen=True, slots=True)
class SDKErrors:
    """The exception classes of an official SDK (openai and anthropic share their shape)."""

    timeout: type[Exception]
    connection: type[Exception]
    status: type[Exception]
    """An HTTP error response, or an error event sent inside a stream with status 200: it
    carries ``status_code`` and the error ``body``."""
    in_stream: tuple[type[Exception], ...] = ()
    """Other errors reported inside a stream, with the error ``body``."""


def provider_error(code: str, message: str) -> ProviderError:
    """A ``ProviderError`` whose ``retryable`` flag follows from ``code``."""
    return ProviderError(message, code=code, retryable=code in RETRYABLE_CODES)


def code_for_status(status: int) -> str:
    """The stable code of an HTTP error status."""
    if status in (401, 403):
        return AUTH_FAILED
    if status == 408:
        return TIMEOUT
    if status == 429:
        return RATE_LIMITED
    if 500 <= status <= 599:
        return UNAVAILABLE
    if 400 <= status <= 499:
        return BAD_REQUEST
    return FAILED


def from_status(provider: str, status: int, detail: str | None) -> ProviderError:
    """The error for an HTTP error response; ``detail`` must already be redacted."""
    code = code_for_status(status)
    if code == AUTH_FAILED:
        return provider_error(code, f"{provider} rejected the credentials (HTTP {status})")
    message = f"{provider} answered HTTP {status}"
    return provider_error(code, f"{message}: {detail}" if detail else message)


def from_error_event(provider: str, error_type: str | None, detail: str | None) -> ProviderError:
    """The error for an error event the provider sent inside an otherwise successful stream."""
    code = _TYPE_CODES.get(error_type or "", FAILED)
    if code == AUTH_FAILED:
        return provider_error(code, f"{provider} rejected the credentials mid-stream")
    message = f"{provider} reported an error mid-stream ({error_type or 'unknown'})"
    return provider_error(code, f"{message}: {detail}" if detail else message)


def unreachable(provider: str) -> ProviderError:
    return provider_error(UNREACHABLE, f"could not connect to {provider}")


def timed_out(provider: str) -> ProviderError:
    return provider_error(TIMEOUT, f"{provider} did not answer in time")


def connection_lost(provider: str) -> ProviderError:
    return provider_error(FAILED, f"the connection to {provider} was lost mid-reply")


def malformed(provider: str, what: str) -> ProviderError:
    return provider_error(FAILED, f"{provider} sent a malformed stream: {what}")


def unexpected(provider: str, exc: Exception, *, started: bool) -> ProviderError:
    """Any other failure: a malformed stream once the reply started, else a failed request."""
    if started:
        return malformed(provider, type(exc).__name__)
    return provider_error(FAILED, f"the request to {provider} failed ({type(exc).__name__})")


def from_exception(
    provider: str, exc: Exception, *, started: bool, secret: str | None, sdk: SDKErrors
) -> ProviderError:
    """The ``ProviderError`` for ``exc``, raised by ``sdk`` or its transport before the reply
    started (``started=False``) or while it was read."""
    if isinstance(exc, ProviderError):
        return exc
    cause = _aiohttp_cause(exc)
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return timed_out(provider)
    if cause is not None:
        return connection_lost(provider) if started else unreachable(provider)
    if isinstance(exc, (sdk.timeout, httpx2.TimeoutException)):
        return timed_out(provider)
    # The SDKs wrap transport errors while they make the request; read from the body, they
    # arrive unwrapped.
    if isinstance(exc, (sdk.connection, *TRANSPORT_ERRORS)):
        return connection_lost(provider) if started else unreachable(provider)
    if isinstance(exc, (sdk.status, *sdk.in_stream)):
        error_type, detail = error_fields(getattr(exc, "body", None))
        detail = redact(detail, secret)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and not 200 <= status < 300:
            return from_status(provider, status, detail)
        return from_error_event(provider, error_type, detail)
    return unexpected(provider, exc, started=started)


def _aiohttp_cause(exc: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp error in ``exc``'s chain of causes, if there is one."""
    current: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if current is None or isinstance(current, aiohttp.ClientError):
            return current
        current = current.__cause__
    return None


def error_fields(body: object) -> tuple[str | None, str | None]:
    """``(type, message)`` of an error body shaped ``{"error": {...}}`` or ``{...}``."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None, None
    error_type, message = body.get("type"), body.get("message")
    return (
        error_type if isinstance(error_type, str) else None,
        message if isinstance(message, str) else None,
    )


def redact(text: str | None, secret: str | None) -> str | None:
    """``text`` without ``secret`` in it, cut to a few hundred characters."""
    if not text:
        return None
    if secret:
        text = text.replace(secret, "[redacted]")
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[: _MAX_DETAIL_CHARS - 1] + "…"
    return text
