"""Run one device's program for one task: receive rows, run strip models, send rows.

The program is the list of steps `halpc compile` wrote into the manifest. The executor is a
generator that yields whenever a `recv` finds nothing yet, so one process can interleave every
device of a bundle (`halpc verify`), while a device on a board, whose transport blocks until the
message arrives, simply runs it to the end.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Protocol

import numpy as np
import onnxruntime as ort

from halpc_stub.store import RowStore

Rows = tuple[int, int]


class Transport(Protocol):
    def send(self, to: str, tensor: str, rows: Rows, array: np.ndarray) -> None: ...

    def try_recv(self, sender: str, tensor: str, rows: Rows) -> np.ndarray | None: ...


def run_program(
    steps: list[dict[str, Any]],
    store: RowStore,
    session: Callable[[str], ort.InferenceSession],
    transport: Transport,
    results: dict[str, np.ndarray],
) -> Iterator[None]:
    """Execute `steps`; graph outputs (host only) land in `results`. Yields while blocked."""
    for step in steps:
        op = step["op"]
        if op == "send":
            rows = tuple(step["rows"])
            transport.send(step["to"], step["tensor"], rows, store.get(step["tensor"], rows))
        elif op == "recv":
            rows = tuple(step["rows"])
            while (array := transport.try_recv(step["from"], step["tensor"], rows)) is None:
                yield
            store.put(step["tensor"], rows, array)
        elif op == "run":
            feeds = {t: store.get(t, tuple(r)) for t, r in step["inputs"].items()}
            names = list(step["outputs"])
            for name, array in zip(names, session(step["model"]).run(names, feeds)):
                store.put(name, tuple(step["outputs"][name]), array)
        elif op == "tail":
            feeds = {t: store.whole(t) for t in step["inputs"]}
            names = list(step["outputs"])
            for name, array in zip(names, session(step["model"]).run(names, feeds)):
                store.put_whole(name, array)
        elif op == "output":
            for name in step["tensors"]:
                results[name] = store.whole(name)
        else:
            raise ValueError(f"unknown step {op!r}")
