"""How deep JSON-like data nests, found without recursion.

A hostile message can nest lists 100,000 levels deep; Python's own walkers
(``json``, ``repr``, ``pickle``, pydantic) give up with a ``RecursionError``
long before. This looks level by level instead.
"""

from __future__ import annotations

__all__ = ["nests_deeper_than"]


def nests_deeper_than(value: object, depth: int) -> bool:
    """Whether lists, tuples and dicts nest more than ``depth`` levels in ``value``."""
    level: list[object] = [value]
    for _ in range(depth + 1):
        below: list[object] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, list | tuple):
                below.extend(item)
        if not below:
            return False
        level = below
    return True
