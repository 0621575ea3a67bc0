"""The usage of a finished reply: reported counts, and estimates (labelled) for missing ones."""

from kgents.llm.base import estimate_request_tokens, estimate_tokens, reply_usage
from tests.llm.streams import sample_request


def test_reported_counts_are_used_as_they_are() -> None:
    usage = reply_usage(sample_request(), "abc", model="m", tokens_in=10, tokens_out=2)

    assert (usage.tokens_in, usage.tokens_out, usage.model, usage.estimated) == (10, 2, "m", False)


def test_missing_counts_are_estimated_and_labelled() -> None:
    usage = reply_usage(sample_request(), "one two", model="m", tokens_in=None, tokens_out=None)

    assert usage.tokens_in == estimate_request_tokens(sample_request())
    assert usage.tokens_out == estimate_tokens("one two")
    assert usage.estimated is True


def test_one_missing_count_makes_the_whole_usage_an_estimate() -> None:
    usage = reply_usage(sample_request(), "one two", model="m", tokens_in=7, tokens_out=None)

    assert (usage.tokens_in, usage.tokens_out, usage.estimated) == (7, 2, True)
