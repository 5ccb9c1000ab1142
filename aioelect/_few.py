"""Slots that usually hold one item: the item as is, two or more in a list.

One process may hold thousands of elections, each with a term's cancel scope
and a leader key's listener: storing the usual single item without a list
saves one object apiece. Items are compared by identity.
"""

from __future__ import annotations

from typing import TypeAlias, TypeVar

__all__ = ("Few", "add", "each", "remove")

T = TypeVar("T")

#: None, one item, or a list of two or more.
Few: TypeAlias = "T | list[T] | None"


def add(few: Few[T], item: T) -> Few[T]:
    """``few`` with ``item`` added."""
    if few is None:
        return item
    if isinstance(few, list):
        few.append(item)
        return few
    return [few, item]


def remove(few: Few[T], item: T) -> Few[T]:
    """``few`` without ``item`` (unchanged if it is not there)."""
    if isinstance(few, list):
        for i, x in enumerate(few):
            if x is item:
                del few[i]
                break
        return few if len(few) > 1 else few[0]
    return None if few is item else few


def each(few: Few[T]) -> tuple[T, ...]:
    """The items, as a tuple (a copy: callbacks may add or remove meanwhile)."""
    if few is None:
        return ()
    return tuple(few) if isinstance(few, list) else (few,)
