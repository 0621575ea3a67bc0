"""API key and admin token material: generation, hashing, constant-time checks."""

import hashlib
import hmac
import re

from kgents.ids import random_base62

KEY_PREFIX = "kg_live_"
KEY_RANDOM_LENGTH = 32
_KEY_RE = re.compile(r"kg_live_[0-9A-Za-z]{32}")
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 4


def generate_api_key() -> str:
    """A new key: ``kg_live_`` and 32 random base62 characters (about 190 bits)."""
    return KEY_PREFIX + random_base62(KEY_RANDOM_LENGTH)


def looks_like_api_key(value: str) -> bool:
    return bool(_KEY_RE.fullmatch(value))


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored instead of the key (keys are random, so no salt is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """The short, non-secret beginning of a key shown in listings (``kg_live_AbCd``)."""
    return key[:DISPLAY_PREFIX_LENGTH]


def generate_admin_token() -> str:
    return "kg_admin_" + random_base62(40)


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())
