"""Run a whole bundle in one process and compare it with the unsplit model, bit for bit.

Every device's program runs through the same executor the stub uses on a board, interleaved
over an in-process mailbox, with the same ONNX Runtime options as the reference run. So what is
proven here is the bundle itself: its files, its schedule and its row arithmetic.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from halpc.errors import HalpcError
from halpc.progress import Progress, silent
from halpc_stub.executor import host_store, run_program
from halpc_stub.manifest import Manifest, load_manifest
from halpc_stub.session import (bundle_nchwc, is_onnxruntime_error, make_session, strip_session, target_mismatch,
                                this_target)
from halpc_stub.errors import BundleError
from halpc_stub.store import MissingRows, RowStore


@dataclass(frozen=True)
class OutputCheck:
    case: str
    name: str
    shape: tuple[int, ...]
    exact: bool
    max_abs_diff: float


class ProgramsMismatch(Exception):
    """The devices' programs do not fit together (a deadlock, a message sent twice or never
    received): a manifest edited or damaged, or for a bundle just compiled, a bug in halpc."""


class Mailbox:
    """Messages between the devices of one process, keyed like the wire protocol's headers."""

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str, str, tuple[int, int]], np.ndarray] = {}
        self.sent = 0

    def endpoint(self, device: str) -> _Endpoint:
        return _Endpoint(self, device)


@dataclass
class _Endpoint:
    mailbox: Mailbox
    device: str

    def send(self, step: dict, array: np.ndarray) -> None:
        key = (self.device, step["to"], step["tensor"], tuple(step["rows"]))
        if key in self.mailbox.messages:
            raise ProgramsMismatch(f"message {key} sent twice")
        # A real link copies the bytes: the receiver must never alias the sender's buffer.
        self.mailbox.messages[key] = np.array(array, copy=True)
        self.mailbox.sent += 1

    def try_recv(self, step: dict) -> np.ndarray | None:
        key = (step["from"], self.device, step["tensor"], tuple(step["rows"]))
        return self.mailbox.messages.pop(key, None)


def run_bundle(manifest: Manifest, inputs: dict[str, np.ndarray], sessions) -> dict[str, np.ndarray]:
    """Outputs of the split model for one task, all devices interleaved in this process."""
    specs = manifest.tensors
    mailbox = Mailbox()
    results: dict[str, np.ndarray] = {}
    runners: dict[str, Iterator[None]] = {}
    host = manifest.host.name
    for device in manifest.devices:
        if device.name == host:
            store = host_store(specs, manifest.data["spatial_input"], inputs)
        else:
            store = RowStore(specs)
        runners[device.name] = run_program(
            manifest.program(device.name),
            store,
            lambda file, d=device: sessions(d, file),
            mailbox.endpoint(device.name),
            results,
        )
    while runners:
        before = (mailbox.sent, len(runners))
        for name in list(runners):
            try:
                next(runners[name])
            except StopIteration:
                del runners[name]
        if runners and (mailbox.sent, len(runners)) == before:
            raise ProgramsMismatch(f"schedule deadlock: {', '.join(runners)} wait for messages never sent")
    if mailbox.messages:
        raise ProgramsMismatch(f"{len(mailbox.messages)} messages were sent but never received")
    return results


def random_inputs(manifest: Manifest, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in manifest.inputs:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            arrays[spec["name"]] = rng.standard_normal(spec["shape"]).astype(dtype)
        else:
            arrays[spec["name"]] = rng.integers(0, 2, spec["shape"]).astype(dtype)
    return arrays


def load_inputs(manifest: Manifest, path: Path) -> dict[str, np.ndarray]:
    names = [spec["name"] for spec in manifest.inputs]
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise HalpcError(f"{path}: no such input file") from None
    except (OSError, ValueError):
        raise HalpcError(
            f"{path}: not a .npy or .npz file of numeric arrays; save the input with numpy.save "
            "(one input) or numpy.savez (one array per input name)"
        ) from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise HalpcError(f"{path}: the model has inputs {', '.join(names)}; give an .npz with one array per input")
        arrays = {names[0]: loaded}
    else:
        arrays = {k: loaded[k] for k in loaded.files}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise HalpcError(f"{path}: no array for input(s) {', '.join(missing)} (it has {', '.join(arrays)})")
    for spec in manifest.inputs:
        array = arrays[spec["name"]]
        if tuple(array.shape) != tuple(spec["shape"]) or array.dtype != np.dtype(spec["dtype"]):
            raise HalpcError(
                f"{path}: input {spec['name']!r} is {array.dtype} {'x'.join(map(str, array.shape))}; "
                f"the bundle was compiled for {spec['dtype']} {'x'.join(map(str, spec['shape']))}"
            )
    return {n: arrays[n] for n in names}


def verify(bundle: str | Path, input_file: str | Path | None = None, seeds: int = 1,
           progress: Progress = silent) -> list[OutputCheck]:
    manifest = load_manifest(bundle)
    manifest.check_files()
    if manifest.data["onnxruntime"] != onnxruntime.__version__:
        raise HalpcError(
            f"{bundle}: compiled with onnxruntime {manifest.data['onnxruntime']}, this is "
            f"{onnxruntime.__version__}; bit-exactness is a property of one build, install that one"
        )
    if why := target_mismatch(manifest, this_target(manifest), "this machine"):
        raise HalpcError(f"{bundle}: {why}; verify an aarch64 bundle in the emulated ARM64 environment, or on "
                         "a board")
    nchwc = bundle_nchwc(manifest)
    cache: dict[tuple[str, str], object] = {}

    def sessions(device, file: str):
        key = (device.name, file)
        if key not in cache:
            cache[key] = strip_session(manifest, device.name, file)
        return cache[key]

    def cases(plan: Manifest) -> list[tuple[str, dict[str, np.ndarray]]]:
        """The inputs for a plan (the sources of a bundle may run models with different inputs)."""
        if input_file is not None:
            return [(Path(input_file).name, load_inputs(plan, Path(input_file)))]
        return [(f"seed {s}", random_inputs(plan, s)) for s in range(seeds)]

    plans = manifest.plans
    checks = []
    references: dict[Path, object] = {}
    for plan in plans:  # every plan against its own variant's unsplit model
        path = plan.reference_model()
        for case, inputs in cases(plan):
            progress(f"plan {plan.id}: {case}" if len(plans) > 1 else case)
            try:
                if path not in references:
                    references[path] = make_session(str(path), plan.host.threads, nchwc=nchwc)
                reference = references[path]
                expected = dict(zip(plan.outputs, reference.run(plan.outputs, inputs)))
                got = run_bundle(plan, inputs, sessions)
                missing = [name for name in plan.outputs if name not in got]
                if missing:
                    raise ProgramsMismatch(f"no device outputs {', '.join(missing)}")
            except Exception as exc:
                if not (isinstance(exc, (BundleError, MissingRows, ProgramsMismatch, KeyError, ValueError))
                        or is_onnxruntime_error(exc)):
                    raise
                # What a manifest that does not fit its files raises (ORT's own errors,
                # programs that do not fit together a ProgramsMismatch): the user's to mend.
                # Anything else is a bug in halpc and escapes as one.
                raise HalpcError(
                    f"{bundle}: plan {plan.id!r} does not run ({type(exc).__name__}: {exc}); the manifest does not "
                    "match the bundle's files (edited or damaged?); recompile the bundle"
                ) from None
            label = f"{plan.id} {case}" if len(plans) > 1 else case
            for name in plan.outputs:
                checks.append(compare_output(label, name, expected[name], got[name]))
    return checks


def compare_output(case: str, name: str, expected: np.ndarray, got: np.ndarray) -> OutputCheck:
    if expected.shape != got.shape:
        return OutputCheck(case, name, tuple(got.shape), False, float("inf"))
    exact = bool(np.array_equal(expected, got))
    diff = 0.0
    if not exact and expected.size:
        diff = float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64))))
    return OutputCheck(case, name, tuple(expected.shape), exact, diff)
