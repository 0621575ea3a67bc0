"""Structured logs: JSON lines when stderr is not a terminal, readable lines when it is.

Every record carries ``time`` (UTC, RFC 3339), ``level``, ``logger``, ``message`` and the
``request_id``, ``tenant_id`` and ``session_id`` of the request it was logged for (``None``
outside one). A request's context lives in a ``ContextVar`` set by ``RequestObserver``, so
tasks started by the request (the generation of a reply) log with it too.

Secrets never reach the output: API keys, admin tokens, bearer credentials, provider keys and
the passwords and tokens in URLs are masked in every message and traceback. Message contents
are not logged by the platform.
"""

import json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

from kgents.redaction import mask_url_credentials

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: dict[str, LogFormat] = {"auto": "auto", "json": "json", "text": "text"}
HANDLER_NAME = "kgents"
CONTEXT_FIELDS = ("request_id", "tenant_id", "session_id")

_SECRETS = (
    (re.compile(r"kg_live_[0-9A-Za-z]+"), "kg_live_[redacted]"),
    (re.compile(r"kg_admin_[0-9A-Za-z]+"), "kg_admin_[redacted]"),
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), r"\1 [redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-[redacted]"),
    (
        re.compile(
            r"(?i)\b(x-api-key|api[_-]?key|token|password)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
        ),
        r"\1\2[redacted]",
    ),
)
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "color_message", *CONTEXT_FIELDS}
)


def redact(text: str) -> str:
    """``text`` with every secret-looking value masked (URL credentials included)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return mask_url_credentials(text)


@dataclass(slots=True)
class RequestContext:
    """The request being served. Tenant and session are read from the ASGI scope when a
    record is logged, since they are known only once the route has matched and authenticated."""

    request_id: str
    scope: MutableMapping[str, Any]

    @property
    def tenant_id(self) -> str | None:
        state = self.scope.get("state")
        value = state.get("tenant_id") if isinstance(state, Mapping) else None
        return value if isinstance(value, str) else None

    @property
    def session_id(self) -> str | None:
        params = self.scope.get("path_params")
        value = params.get("session_id") if isinstance(params, Mapping) else None
        return value if isinstance(value, str) else None


_current: ContextVar[RequestContext | None] = ContextVar("kgents_request", default=None)


def enter_request(context: RequestContext) -> Token[RequestContext | None]:
    return _current.set(context)


def leave_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


HTTP_CLIENT_LOGGERS = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic"})
"""Libraries that log a line per HTTP request (the providers' calls): detail, not news."""


class HttpClientDetailFilter(logging.Filter):
    """Logs the HTTP client libraries' info lines at debug level: on the hot path one line per
    provider request is noise. Their warnings and errors pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno != logging.INFO
            or record.name.split(".", 1)[0] not in HTTP_CLIENT_LOGGERS
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``tenant_id`` and ``session_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        record.request_id = context.request_id if context else None
        record.tenant_id = context.tenant_id if context else None
        record.session_id = context.session_id if context else None
        return True


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for field in CONTEXT_FIELDS:
            entry[field] = getattr(record, field, None)
        for key, value in _extras(record).items():
            entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z INFO  kgents.access  GET /health 200  request_id=…``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = {field: getattr(record, field, None) for field in CONTEXT_FIELDS}
        fields.update(_extras(record))
        context = "  ".join(
            f"{key}={redact(str(value))}" for key, value in fields.items() if value is not None
        )
        line = f"{_time(record)} {record.levelname:<7} {record.name}  {redact(record.getMessage())}"
        if context:
            line += f"  {context}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def build_handler(fmt: LogFormat = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr): JSON unless ``auto`` finds a terminal."""
    target = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "text" if target.isatty() else "json"
    handler = logging.StreamHandler(target)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(HttpClientDetailFilter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(
    *, level: str | int = "INFO", fmt: LogFormat = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record (uvicorn's too) through one structured handler on the root logger.

    Calling it again replaces the handler it installed before; other handlers are left alone.
    Returns the handler (remove it from the root logger to undo)."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == HANDLER_NAME:
            root.removeHandler(existing)
    handler = build_handler(fmt, stream)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    return handler
