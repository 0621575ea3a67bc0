"""Subjects are built only from validated tokens: no client can reach another subject."""

from collections.abc import Callable

import pytest

from kgents.errors import InvalidInput
from kgents.streaming.subjects import (
    cancel_subject,
    event_type_of,
    session_id_of,
    session_subject,
    session_wildcard,
    usage_subject,
)

HOSTILE_IDS = [
    "a.b",
    "*",
    ">",
    "a.>",
    "a*",
    "a b",
    " ",
    "a\tb",
    "a\r\nPUB x 1",
    "x" * 1024,
    "x" * 65,
    "",
    "ses_é",
    "..",
]


def test_session_subjects() -> None:
    assert session_subject("ses_abc-1", "chunk") == "kgent.session.ses_abc-1.chunk"
    assert session_wildcard("ses_abc") == "kgent.session.ses_abc.>"
    assert cancel_subject("ses_abc") == "kgent.control.cancel.ses_abc"
    assert session_subject("x" * 64, "complete").count(".") == 3


@pytest.mark.parametrize("bad", HOSTILE_IDS)
@pytest.mark.parametrize("build", [session_wildcard, cancel_subject], ids=lambda f: f.__name__)
def test_hostile_session_ids_are_refused(bad: str, build: Callable[[str], str]) -> None:
    with pytest.raises(InvalidInput) as caught:
        build(bad)
    assert caught.value.code == "invalid_id"
    with pytest.raises(InvalidInput):
        session_subject(bad, "chunk")


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_event_types_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        session_subject("ses_ok", bad)


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidInput):
        session_subject(123, "chunk")  # type: ignore[arg-type]


def test_usage_types_become_subject_tokens() -> None:
    assert usage_subject("llm.tokens") == "kgent.usage.llm.tokens"
    assert usage_subject("api.request") == "kgent.usage.api.request"
    assert usage_subject("session_create") == "kgent.usage.session_create"


@pytest.mark.parametrize("bad", ["", ".", "llm..tokens", ".llm", "llm.", "llm.*", "a.>", "a b"])
def test_hostile_usage_types_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        usage_subject(bad)


def test_parsing_subjects_back() -> None:
    assert session_id_of("kgent.session.ses_1.chunk") == "ses_1"
    assert session_id_of("kgent.control.cancel.ses_1") == "ses_1"
    assert session_id_of("kgent.usage.llm.tokens") is None
    assert event_type_of("kgent.session.ses_1.chunk") == "chunk"
    assert event_type_of("kgent.session.ses_1.chunk.extra") is None
    assert event_type_of("other.session.ses_1.chunk") is None
