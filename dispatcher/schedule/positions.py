"""Positions of keys and values in a ruamel.yaml round-trip tree.

A *path* is a tuple of mapping keys and sequence indexes, as in a pydantic
error's ``loc`` (``("ladder", 1, "channels")``). Positions are 1-based
``(line, col)`` pairs. A path that leaves the tree (a value of the wrong shape)
resolves to the deepest node it reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

YamlPath = tuple[int | str, ...]
Position = tuple[int, int]

KEY_MARK = "[key]"
"""The path element pydantic appends when a mapping's key (not its value) is invalid."""


def _child(node: Any, part: int | str) -> Any:
    """The child of ``node`` at ``part``, or ``None`` when there is none."""
    if isinstance(node, CommentedMap):
        return node.get(part) if part in node else None
    if isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _walk(root: Any, path: YamlPath) -> tuple[Any, int]:
    """The deepest collection node along ``path`` and how many parts led to it."""
    node, depth = root, 0
    for part in path:
        child = _child(node, part)
        if not isinstance(child, (CommentedMap, CommentedSeq)):
            break
        node, depth = child, depth + 1
    return node, depth


def _one_based(pair: Sequence[int]) -> Position:
    return pair[0] + 1, pair[1] + 1


def node_position(root: Any, path: YamlPath) -> Position:
    """Where the collection at ``path`` (or the deepest one on the way) starts."""
    node, _ = _walk(root, path)
    if isinstance(node, (CommentedMap, CommentedSeq)):
        return node.lc.line + 1, node.lc.col + 1
    return 1, 1


def key_position(root: Any, path: YamlPath) -> Position:
    """Where the key of the mapping entry at ``path`` is written."""
    if not path:
        return node_position(root, path)
    parent, depth = _walk(root, path[:-1])
    if depth == len(path) - 1 and isinstance(parent, CommentedMap) and path[-1] in parent:
        return _one_based(parent.lc.key(path[-1]))
    return value_position(root, path)


def value_position(root: Any, path: YamlPath) -> Position:
    """Where the value at ``path`` is written; its key's position for a mapping key error."""
    if path and path[-1] == KEY_MARK:
        return key_position(root, path[:-1])
    if not path:
        return node_position(root, path)
    parent, depth = _walk(root, path[:-1])
    if depth < len(path) - 1:
        return _position_in(parent, path[depth]) or node_position(root, path)
    return _position_in(parent, path[-1]) or node_position(root, path[:-1])


def _position_in(parent: Any, part: int | str) -> Position | None:
    """Position of the entry ``part`` inside ``parent``, if it exists."""
    if isinstance(parent, CommentedMap) and part in parent:
        return _one_based(parent.lc.value(part))
    if isinstance(parent, CommentedSeq) and isinstance(part, int) and 0 <= part < len(parent):
        return _one_based(parent.lc.item(part))
    return None


def format_path(path: YamlPath) -> str:
    """``("ladder", 1, "channels")`` → ``ladder[1].channels``."""
    text = ""
    for part in path:
        if part == KEY_MARK:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
