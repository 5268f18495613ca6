"""Limits on reading a schedule file: its size, how deep it nests and how far its aliases expand.

A YAML alias (``*name``) repeats the node its anchor (``&name``) marks. Aliases
of aliases multiply ("billion laughs"): ten short lines can stand for 10⁹ values
and hang whatever turns them into data. :class:`LimitedComposer` counts, for each
alias, the values it stands for and stops at the alias that takes the total past
:data:`DEFAULT_ALIAS_BUDGET`; an alias inside the node it names (a cycle) and
nesting deeper than :data:`DEFAULT_MAX_DEPTH` are refused there too, and
:class:`LimitedScanner` refuses deep ``[[[…`` before the scanner's look-ahead
(quadratic in the nesting) gets far. All of it happens before any value is
built. :func:`read_limited` refuses a file larger than
:data:`DEFAULT_MAX_FILE_BYTES` after reading at most that much.

Each refusal is a :class:`YamlLimitError` at the place it happened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, StreamMark
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode
from ruamel.yaml.scanner import RoundTripScanner

DEFAULT_MAX_FILE_BYTES = 256 * 1024
"""The largest schedule file read (256 KiB, about 2 s of parsing); the shipped one has under 4 KiB."""

DEFAULT_ALIAS_BUDGET = 10_000
"""Values that all the aliases of a file may stand for together."""

DEFAULT_MAX_DEPTH = 64
"""Collections inside collections a schedule file may nest (the schema needs fewer than 10)."""


class YamlLimitError(MarkedYAMLError):
    """A schedule file goes past one of the limits; ``problem_mark`` is where."""

    def __init__(self, message: str, mark: StreamMark | None) -> None:
        super().__init__(problem=message, problem_mark=mark)


class LimitedComposer(Composer):
    """ruamel.yaml's composer with an alias budget, no alias cycles and a depth limit."""

    alias_budget = DEFAULT_ALIAS_BUDGET
    max_depth = DEFAULT_MAX_DEPTH

    def compose_document(self) -> Any:
        self._expanded = 0
        self._sizes: dict[int, int] = {}
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            self._count_alias(event)
        elif self.depth >= self.max_depth:
            raise YamlLimitError(f"the file nests deeper than {self.max_depth} levels", event.start_mark)
        return super().compose_node(parent, index)

    def _count_alias(self, event: AliasEvent) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # undefined: the composer reports it
        if isinstance(node, (SequenceNode, MappingNode)) and node.end_mark is None:
            raise YamlLimitError(f"the alias *{event.anchor} is inside the node it repeats", event.start_mark)
        self._expanded += _size(node, self._sizes)
        if self._expanded > self.alias_budget:
            raise YamlLimitError(
                f"the aliases expand to more than {self.alias_budget} values (an alias bomb?); "
                "write the values out or use fewer aliases", event.start_mark)


class LimitedScanner(RoundTripScanner):
    """ruamel.yaml's round-trip scanner, refusing ``[`` and ``{`` nested deeper than the depth limit."""

    max_depth = DEFAULT_MAX_DEPTH

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: str) -> None:
        if self.flow_level >= self.max_depth:
            raise YamlLimitError(f"the file nests deeper than {self.max_depth} levels", self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


def _size(node: Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for, aliases within it expanded; remembered per node."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    total = 1
    if isinstance(node, SequenceNode):
        total += sum(_size(item, sizes) for item in node.value)
    elif isinstance(node, MappingNode):
        total += sum(_size(key, sizes) + _size(value, sizes) for key, value in node.value)
    sizes[id(node)] = total
    return total


def limited_yaml() -> YAML:
    """A round-trip loader (positions kept) that scans and composes within the limits."""
    yaml = YAML(typ="rt")
    yaml.Scanner = LimitedScanner
    yaml.Composer = LimitedComposer
    return yaml


def read_limited(path: Path, limit: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, reading no more than ``limit`` + 1 of them; raises :class:`YamlLimitError` past it.

    The error's mark is where the limit is reached. Raises :class:`OSError` when the file cannot be read.
    """
    with path.open("rb") as stream:
        content = stream.read(limit + 1)
        if len(content) <= limit:
            return content
        size = os.fstat(stream.fileno()).st_size
    head = content[:limit]
    line = head.count(b"\n")
    column = len(head[head.rfind(b"\n") + 1:].decode("utf-8", errors="ignore"))
    mark = StreamMark(str(path), limit, line, column)
    raise YamlLimitError(f"the file has {size:,} bytes, more than the {_amount(limit)} a schedule file may have "
                         "(the limit is reached here)", mark)


def _amount(limit: int) -> str:
    """``256 KiB`` for 262144, ``1 MiB`` for 1048576, ``1,000 bytes`` for 1000."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit:,} bytes"
