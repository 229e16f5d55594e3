"""A bounded least-recently-used cache: prompt plans and chunk programs (policy), prompt tokens (training),
decoded video segments (gem_train)."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The cached value (now the most recently used), else `build()`, stored; the least recently used
        beyond `capacity` are dropped."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        """Least recently used first."""
        return list(self._items)

    def values(self) -> list[V]:
        """Least recently used first."""
        return list(self._items.values())
