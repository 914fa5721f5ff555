"""The one registry mechanism: named plug-ins with errors that list what exists."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """Named plug-ins of one kind (``kind`` names it in errors), in registration order.

    Plug-ins are added with :meth:`register` or the :meth:`add` decorator; a name can be
    registered once. Looking up an unknown name raises a ``KeyError`` that lists every
    registered name, so a config error says what is valid. A renamed plug-in keeps its old
    name for a while as an :meth:`alias` (the same object; the first look-up by the old
    name logs a deprecation warning).

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
        self._aliases: dict[str, tuple[str, str]] = {}  # old name -> (name, why)
        self._warned: set[str] = set()

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def alias(self, old: str, name: str, why: str) -> None:
        """Keep ``old`` as another name of the registered ``name``: it looks up the same
        object and counts among the names; the first look-up by it logs ``why`` as a
        deprecation warning (once per process).

        >>> scores = Registry("score")
        >>> _ = scores.register("ones", 1.0)
        >>> scores.alias("unit", "ones", "renamed to ones")
        >>> scores["unit"] is scores["ones"], scores.canonical("unit"), scores.names()
        (True, 'ones', ['ones', 'unit'])
        """
        if old in self._items or old in self._aliases:
            raise ValueError(f"{self.kind} {old!r} is registered twice")
        if name not in self._items:
            raise KeyError(f"alias {old!r} of an unknown {self.kind} {name!r}; valid choices: "
                           f"{', '.join(self._items)}")
        self._aliases[old] = (name, why)

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself unless it is an alias)."""
        return self._aliases[name][0] if name in self._aliases else name

    def add(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`register`."""
        return lambda obj: self.register(name, obj)

    def __getitem__(self, name: str) -> T:
        if name in self._aliases:
            target, why = self._aliases[name]
            if name not in self._warned:
                self._warned.add(name)
                log.warning("%s %r is deprecated and will be removed: %s", self.kind, name, why)
            return self._items[target]
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """Every valid name: the registered ones in order, then the aliases."""
        return [*self._items, *self._aliases]


def import_package(package: str, path: list[str]) -> None:
    """Import every module of ``package`` (a package's ``__name__`` and ``__path__``), in
    name order, so that a plug-in in a new module registers itself without being listed
    anywhere (a new method or judge is one module)."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        importlib.import_module(f"{package}.{info.name}")
