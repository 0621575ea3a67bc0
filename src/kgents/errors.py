"""Domain errors. Adapters raise these (``raise ... from exc``); api/errors.py maps them.

KgentsError                      code              HTTP
├── InvalidInput                 validation_error  400/422
│   ├── QueryTooLarge            query_too_large   400
│   ├── InvalidResumePoint       invalid_resume_point  400
│   └── BadRequest               bad_request       400 (a request that cannot be meant)
├── Unauthenticated              unauthorized      401
├── QuotaExceeded                quota_exceeded    402
├── Forbidden                    forbidden         403
│   ├── BudgetNotAllowed         budget_not_allowed
│   ├── ScopeMissing             scope_missing
│   └── AccessLapsed             key_revoked, key_expired, tenant_suspended (ends a stream)
├── NotFound                     not_found         404
├── Conflict                     conflict          409
│   └── TurnInProgress           turn_in_progress
├── RateLimited                  rate_limited      429
├── TooManyStreams               too_many_streams  429
├── ProviderError                provider_*        502/503
└── Unavailable                  *_unavailable     503
    └── EventsUnavailable        events_unavailable
"""


class KgentsError(Exception):
    """Root of every error the platform raises on purpose. ``code`` is stable snake_case."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(KgentsError):
    code = "validation_error"


class QueryTooLarge(InvalidInput):
    """A query asking for more work than the limits allow (its message states the limit)."""

    code = "query_too_large"


class InvalidResumePoint(InvalidInput):
    """A ``Last-Event-ID`` or ``?after=`` that is not a stream sequence in range."""

    code = "invalid_resume_point"


class BadRequest(InvalidInput):
    """Invalid as a whole rather than in a field: two different API keys in one request."""

    code = "bad_request"


class Unauthenticated(KgentsError):
    code = "unauthorized"


class QuotaExceeded(KgentsError):
    code = "quota_exceeded"


class Forbidden(KgentsError):
    code = "forbidden"


class BudgetNotAllowed(Forbidden):
    code = "budget_not_allowed"


class ScopeMissing(Forbidden):
    code = "scope_missing"


class AccessLapsed(Forbidden):
    """The key of an open stream was revoked or expired, or its tenant suspended."""

    code = "access_lapsed"


class NotFound(KgentsError):
    code = "not_found"


class Conflict(KgentsError):
    code = "conflict"


class TurnInProgress(Conflict):
    code = "turn_in_progress"


class RateLimited(KgentsError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class TooManyStreams(KgentsError):
    """A key or tenant already holds as many open streams as its plan allows."""

    code = "too_many_streams"


class ProviderError(KgentsError):
    """The LLM provider failed. ``retryable`` errors (429, 5xx, timeouts) map to 503, others 502."""

    code = "provider_error"

    def __init__(self, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable


class Unavailable(KgentsError):
    code = "unavailable"


class EventsUnavailable(Unavailable):
    code = "events_unavailable"
