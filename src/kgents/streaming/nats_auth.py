"""How a kgents process authenticates to NATS: the nats-py connect options, built in one place.

``external_auth(settings)`` reads ``KGENTS_NATS_CREDS`` and ``KGENTS_NATS_TLS_*``;
``split_credentials(urls)`` takes a user and password (or a token) out of the server URLs, so
that no URL the client keeps, reports or logs carries a secret. The embedded server's
credentials come from its data dir (``streaming/embedded.py``).
"""

import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from kgents.config import Settings
from kgents.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """Credentials and TLS of a NATS connection; secrets stay out of ``repr``."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: Path | None = None
    tls: ssl.SSLContext | None = field(default=None, repr=False)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``Client.connect``."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password or ""
        if self.token is not None:
            options["token"] = self.token
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        if self.tls is not None:
            options["tls"] = self.tls
        return options


NO_AUTH = NatsAuth()


def external_auth(settings: Settings) -> NatsAuth:
    """The credentials file and TLS settings for ``KGENTS_NATS_URL``'s servers."""
    creds = settings.nats_creds
    if creds is not None and not creds.is_file():
        raise InvalidInput(f"KGENTS_NATS_CREDS: no file at {creds}", code="invalid_nats_auth")
    return NatsAuth(creds_file=creds, tls=_tls_context(settings))


def split_credentials(urls: list[str], auth: NatsAuth) -> tuple[list[str], NatsAuth]:
    """The URLs without their user information, and ``auth`` with it added (percent-decoded).

    A user and password become ``user``/``password``, a lone user name is a token. All URLs
    that carry credentials must carry the same ones: the client presents one set to every
    server of the cluster.
    """
    found: set[tuple[str, str | None]] = set()
    bare: list[str] = []
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.username is not None:
            password = unquote(parts.password) if parts.password is not None else None
            found.add((unquote(parts.username), password))
            host = parts.netloc.rpartition("@")[2]
            bare.append(urlunsplit(parts._replace(netloc=host)))
        else:
            bare.append(url)
    if len(found) > 1:
        raise InvalidInput(
            "the servers of KGENTS_NATS_URL carry different credentials", code="invalid_nats_url"
        )
    if not found:
        return bare, auth
    name, password = found.pop()
    if password is None:
        return bare, replace(auth, token=name)
    return bare, replace(auth, user=name, password=password)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    ca, cert, key = settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise InvalidInput(
            "KGENTS_NATS_TLS_CERT and KGENTS_NATS_TLS_KEY go together", code="invalid_nats_auth"
        )
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        if cert is not None and key is not None:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(
            f"cannot load the NATS TLS files ({type(exc).__name__}: {exc})",
            code="invalid_nats_auth",
        ) from exc
    return context
