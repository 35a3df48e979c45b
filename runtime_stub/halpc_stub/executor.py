"""Run one device's program for one task: receive rows, run strip models, send rows.

The program is the list of steps `halpc compile` wrote into the manifest. The executor is a
generator that yields whenever a `recv` finds nothing yet, so one process can interleave every
device of a bundle (`halpc verify`) or several tasks of one device (`halpc-stub`, `halpc run`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Protocol

import numpy as np
import onnxruntime as ort

from halpc_stub.clock import now as clock_now
from halpc_stub.store import RowStore, TensorSpec

# record(kind, start, end, label, peer, nbytes): kind is "compute", "send" or "wait" (blocked in
# a recv); nbytes is what a send sent.
Record = Callable[[str, float, float, str, "str | None", int], None]


class Transport(Protocol):
    def send(self, step: dict[str, Any], array: np.ndarray) -> None: ...

    def try_recv(self, step: dict[str, Any]) -> np.ndarray | None: ...


def host_store(specs: dict[str, TensorSpec], spatial_input: str, inputs: dict[str, np.ndarray]) -> RowStore:
    """The host's store at the start of a task: it holds every model input whole."""
    store = RowStore(specs)
    for name, array in inputs.items():
        if name == spatial_input:
            store.put(name, (0, specs[name].rows), array)
        store.put_whole(name, array)
    return store


def _label(step: dict[str, Any]) -> str:
    if "model" in step:
        return step["model"]
    return f"{step['tensor']} rows {step['rows'][0]}..{step['rows'][1]}"


def run_program(
    steps: list[dict[str, Any]],
    store: RowStore,
    session: Callable[[str], ort.InferenceSession],
    transport: Transport,
    results: dict[str, np.ndarray],
    record: Record | None = None,
) -> Iterator[None]:
    """Execute `steps`; graph outputs (host only) land in `results`. Yields while blocked."""
    clock = clock_now
    for step in steps:
        op = step["op"]
        if op == "send":
            rows = tuple(step["rows"])
            at = clock()
            array = store.get(step["tensor"], rows)
            transport.send(step, array)
            if record:
                record("send", at, clock(), _label(step), step["to"], array.nbytes)
        elif op == "recv":
            rows = tuple(step["rows"])
            waited = None
            while (array := transport.try_recv(step)) is None:
                waited = waited or clock()
                yield
            if record and waited:
                record("wait", waited, clock(), _label(step), step["from"], 0)
            store.put(step["tensor"], rows, array)
        elif op in ("run", "tail"):
            names = list(step["outputs"])
            if op == "run":
                feeds = {t: store.get(t, tuple(r)) for t, r in step["inputs"].items()}
            else:
                feeds = {t: store.whole(t) for t in step["inputs"]}
            at = clock()
            arrays = session(step["model"]).run(names, feeds)
            if record:
                record("compute", at, clock(), _label(step), None, 0)
            for name, array in zip(names, arrays):
                if op == "run":
                    store.put(name, tuple(step["outputs"][name]), array)
                else:
                    store.put_whole(name, array)
        elif op == "output":
            for name in step["tensors"]:
                results[name] = store.whole(name)
        else:
            raise ValueError(f"unknown step {op!r}")
