"""The one registry mechanism: named plug-ins with errors that list what exists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one kind (``kind`` names it in errors), in registration order.

    Plug-ins are added with :meth:`register` or the :meth:`add` decorator; a name can be
    registered once. Looking up an unknown name raises a ``KeyError`` that lists every
    registered name, so a config error says what is valid.

    >>> scores = Registry("score")
    >>> @scores.add("ones")
    ... def ones(x):
    ...     return 1.0
    >>> scores["ones"](0.5), "ones" in scores, scores.names()
    (1.0, True, ['ones'])
    >>> scores["nope"]
    Traceback (most recent call last):
    ...
    KeyError: "unknown score 'nope'; valid choices: ones"
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def add(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`register`."""
        return lambda obj: self.register(name, obj)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return list(self._items)
