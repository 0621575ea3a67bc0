"""Identifiers: a type prefix and 22 base62 characters from a CSPRNG."""

import string
from collections import Counter

from kgents.ids import is_valid_id, new_id, random_base62


def test_new_ids_have_the_documented_shape_and_do_not_repeat() -> None:
    ids = [new_id("turn") for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        prefix, random = value.split("_")
        assert prefix == "turn" and len(random) == 22 and is_valid_id(value)
        assert set(random) <= set(string.digits + string.ascii_letters)


def test_every_base62_character_turns_up_in_every_position() -> None:
    samples = [random_base62(4) for _ in range(5_000)]
    for position in range(4):
        seen = Counter(sample[position] for sample in samples)
        assert len(seen) == 62  # ~80 each; a missing one means a broken mapping
