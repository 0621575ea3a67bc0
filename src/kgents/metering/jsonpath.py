"""The JSONPath subset meters use to read event data: ``$.a``, ``$.a.b``, ``$['a']``, ``$.a[0]``.

OpenMeter meters name one value with a path (``valueProperty``, ``groupBy``), so only paths that
select a single node are accepted; wildcards, filters, slices and recursive descent are refused
when the meter is loaded rather than silently matching nothing later.
"""

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"\.([A-Za-z0-9_$@\-]+)")
_QUOTED = re.compile(r"""\[\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\]""")
_INDEX = re.compile(r"\[\s*(\d+)\s*\]")
_ESCAPE = re.compile(r"\\(.)")


class JsonPathError(ValueError):
    """A path outside the supported subset, with the reason in the message."""


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A parsed path: ``steps`` are object keys (``str``) and array indexes (``int``)."""

    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> "JsonPath":
        if not text.startswith("$"):
            raise JsonPathError(f"JSONPath {text!r} must start with '$'")
        steps: list[str | int] = []
        position = 1
        while position < len(text):
            rest = text[position:]
            if rest.startswith(".."):
                raise JsonPathError(f"JSONPath {text!r}: recursive descent '..' is not supported")
            if match := _NAME.match(text, position):
                steps.append(match.group(1))
            elif match := _QUOTED.match(text, position):
                quoted = match.group(1) if match.group(1) is not None else match.group(2)
                steps.append(_ESCAPE.sub(r"\1", quoted))
            elif match := _INDEX.match(text, position):
                steps.append(int(match.group(1)))
            else:
                raise JsonPathError(
                    f"JSONPath {text!r}: unsupported syntax at {rest!r} "
                    "(use $.name, $['name'] or $.name[0])"
                )
            position = match.end()
        if not steps:
            raise JsonPathError(f"JSONPath {text!r} must select a property, not the whole data")
        return cls(text=text, steps=tuple(steps))

    def extract(self, data: Any) -> Any:
        """The selected value, or ``None`` when the path does not exist in ``data``."""
        node = data
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(node, dict):
                    return None
                node = node.get(step)
            else:
                if not isinstance(node, list) or step >= len(node):
                    return None
                node = node[step]
            if node is None:
                return None
        return node
