"""A resumable position in a deterministic stream (the training prompt stream).

Python generators cannot be pickled, but the problem stream is a pure function of (config, split,
seed): its position is the number of items drawn, and resuming replays the stream to that index.
Replaying costs one problem generation per item (microseconds), far below a training step."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class StreamCursor(Generic[T]):
    """An iterator over ``make()`` that counts what it yields; ``state_dict`` is that count."""

    def __init__(self, make: Callable[[], Iterator[T]]) -> None:
        self._make = make
        self._it = make()
        self.drawn = 0

    def __iter__(self) -> "StreamCursor[T]":
        return self

    def __next__(self) -> T:
        item = next(self._it)
        self.drawn += 1
        return item

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self._it, self.drawn = self._make(), 0
        for _ in range(state["drawn"]):
            next(self)
