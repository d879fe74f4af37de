"""One registry type for everything keyed by a module class: adapters and custom pruners.

Keys are classes or dotted class paths (``"timm.layers.attention.Attention"``):
paths keep the engine free of timm imports, and an entry for a class that a
timm release renamed simply does not apply instead of failing at import.

The lookup rule, the same for adapters and pruners: a module gets the entry of
the most specific class in its MRO that has one, so a subclass inherits its
parent's entry unless it has its own; at each class, a model's own entries
(``ModelSpec.adapters``) win over the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")


def type_key(cls: type | str) -> str:
    """The dotted path a class is registered under."""
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


class TypeRegistry(Generic[V]):
    """Values registered for module classes, looked up along a class's MRO."""

    def __init__(self) -> None:
        self._entries: dict[str, V] = {}

    def register(self, *types: type | str) -> Callable[[V], V]:
        """Decorator: ``@registry.register(MyModule, "pkg.mod.Other")`` over the value."""

        def decorate(value: V) -> V:
            for cls in types:
                self._entries[type_key(cls)] = value
            return value

        return decorate

    def lookup(self, cls: type, extra: Mapping[str, V] | None = None) -> V | None:
        """The entry of the most specific class in ``cls.__mro__``; ``extra`` wins at each class."""
        for base in cls.__mro__:
            key = type_key(base)
            if extra and key in extra:
                return extra[key]
            if key in self._entries:
                return self._entries[key]
        return None


def unmatched_keys(classes: Iterable[type], keys: Iterable[str]) -> list[str]:
    """Keys that name no class in the MRO of any of ``classes`` (a likely typo downstream)."""
    present = {type_key(base) for cls in classes for base in cls.__mro__}
    return sorted(key for key in keys if key not in present)
