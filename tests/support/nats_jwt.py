"""NATS decentralized auth for tests: an operator, an account with JetStream, a user.

``operator_setup()`` returns the server configuration (operator JWT, memory resolver with the
account preloaded) and the user's ``.creds`` text, all signed here with fresh nkeys.
"""

import base64
import json
import os
import time
from dataclasses import dataclass

import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1


@dataclass(frozen=True)
class OperatorSetup:
    server_config: str
    user_creds: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, object]) -> str:
    claims = {
        "jti": _b64(os.urandom(16)),
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def operator_setup() -> OperatorSetup:
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs a system account
    account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    operator_pub = operator.public_key.decode()
    system_pub = system.public_key.decode()
    account_pub = account.public_key.decode()
    operator_jwt = _jwt(
        operator,
        operator_pub,
        "test-operator",
        {"type": "operator", "system_account": system_pub},
    )
    system_jwt = _jwt(operator, system_pub, "SYS", {"type": "account"})
    limits = dict.fromkeys(
        ("subs", "data", "payload", "imports", "exports", "conn", "leaf"), _UNLIMITED
    )
    jetstream = dict.fromkeys(("mem_storage", "disk_storage", "streams", "consumer"), _UNLIMITED)
    account_jwt = _jwt(
        operator,
        account_pub,
        "kgents",
        {"type": "account", "limits": {**limits, **jetstream, "wildcards": True}},
    )
    user_jwt = _jwt(
        account,
        user.public_key.decode(),
        "kgents-api",
        {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
    )
    server_config = (
        f"operator: {operator_jwt}\n"
        f"system_account: {system_pub}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {system_pub}: {system_jwt}\n  {account_pub}: {account_jwt}\n}}\n"
    )
    creds = (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return OperatorSetup(server_config=server_config, user_creds=creds)
