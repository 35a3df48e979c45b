"""The rows of feature maps one device holds during a task, as pieces it computed or received."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Rows = tuple[int, int]


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str
    row_axis: int

    @property
    def rows(self) -> int:
        return self.shape[self.row_axis]

    def strip_shape(self, rows: Rows) -> tuple[int, ...]:
        shape = list(self.shape)
        shape[self.row_axis] = rows[1] - rows[0]
        return tuple(shape)


class MissingRows(LookupError):
    """A step asked for rows the device neither computed nor received."""


class RowStore:
    def __init__(self, specs: dict[str, TensorSpec]) -> None:
        self._specs = specs
        self._pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._whole: dict[str, np.ndarray] = {}

    def put(self, tensor: str, rows: Rows, array: np.ndarray) -> None:
        self._pieces.setdefault(tensor, []).append((rows[0], array))

    def put_whole(self, tensor: str, array: np.ndarray) -> None:
        """A tensor without a row structure here (a non-image input, a tail result)."""
        self._whole[tensor] = array

    def get(self, tensor: str, rows: Rows) -> np.ndarray:
        """Rows [a, b) of `tensor`: a view of one piece when one covers them, else a copy."""
        spec = self._specs[tensor]
        axis = spec.row_axis
        pieces = sorted(self._pieces.get(tensor, []), key=lambda p: p[0])
        parts: list[np.ndarray] = []
        at = rows[0]
        while at < rows[1]:
            best = None
            for start, array in pieces:
                stop = start + array.shape[axis]
                if start <= at < stop and (best is None or stop > best[0] + best[1].shape[axis]):
                    best = (start, array)
            if best is None:
                raise MissingRows(f"{tensor} rows {at}..{rows[1]} are not on this device")
            start, array = best
            stop = min(rows[1], start + array.shape[axis])
            index = [slice(None)] * array.ndim
            index[axis] = slice(at - start, stop - start)
            parts.append(array[tuple(index)])
            at = stop
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)

    def whole(self, tensor: str) -> np.ndarray:
        if tensor in self._whole:
            return self._whole[tensor]
        return self.get(tensor, (0, self._specs[tensor].rows))
