"""Read a bundle's manifest and prove the files on this device are the ones it names."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halpc_stub.errors import BundleError
from halpc_stub.store import TensorSpec

FORMAT = "halpc-bundle/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DeviceEntry:
    name: str
    host: bool
    address: str
    threads: int


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, or a view of part of it: one plan (`plans`), one source (`for_source`).

    A bundle of several sources (cameras) has a host device per source, `sources` naming each
    one's plans, and a `host` in every plan: the source that holds its input and output."""

    root: Path
    data: dict[str, Any]
    # A source's view: the checksum of the whole bundle, which its devices answer pings with.
    bundle_checksum: str | None = field(default=None, repr=False)

    @property
    def devices(self) -> list[DeviceEntry]:
        return [DeviceEntry(d["name"], d["host"], d["address"], d["threads"]) for d in self.data["devices"]]

    @property
    def host(self) -> DeviceEntry:
        """The plan's source when it names one (a bundle of several sources), else the host."""
        name = self.data.get("host")
        return next(d for d in self.devices if (d.name == name if name is not None else d.host))

    @property
    def sources(self) -> list[str]:
        """The sources of a bundle of several, in file order; [] for a one-source bundle."""
        return list(self.data.get("sources", {}))

    def for_source(self, name: str | None) -> Manifest:
        """The bundle as source `name` sees it: only its plans, its default first, as a
        one-source bundle (the whole one itself when it has one source)."""
        sources = self.data.get("sources", {})
        if not sources and name in (None, self.host.name):
            return self
        if name is None and len(sources) == 1:
            (name,) = sources
        if name is None:
            raise BundleError(f"{self.root} serves several sources ({', '.join(sources)}); give --source NAME")
        if name not in sources:
            raise BundleError(f"{self.root / MANIFEST}: no source {name!r} in this bundle "
                              f"({', '.join(sources) or self.host.name})")
        plans = [{k: v for k, v in self.plan(i).data.items() if k not in ("alternatives", "sources")}
                 for i in sources[name]["plans"]]
        data = {**plans[0], "alternatives": plans[1:]} if len(plans) > 1 else plans[0]
        return Manifest(self.root, data, self.checksum)

    def device(self, name: str) -> DeviceEntry:
        for d in self.devices:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.devices)
        raise BundleError(f"{self.root / MANIFEST}: no device {name!r} in this bundle ({names})")

    @property
    def tensors(self) -> dict[str, TensorSpec]:
        return {
            name: TensorSpec(tuple(t["shape"]), t["dtype"], t["row_axis"])
            for name, t in self.data["tensors"].items()
        }

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.data["inputs"]

    @property
    def outputs(self) -> list[str]:
        return [o["name"] for o in self.data["outputs"]]

    @property
    def workers(self) -> list[str]:
        """The devices other than the hosts (sources) that have work in any plan: those that
        run a stub."""
        return [d.name for d in self.devices if not d.host and any(p.program(d.name) for p in self.plans)]

    @property
    def id(self) -> str:
        return self.data.get("id", "default")

    @property
    def plans(self) -> list[Manifest]:
        """Every plan of the bundle, the default first, each seen as a one-plan manifest."""
        common = {k: v for k, v in self.data.items() if k != "alternatives"}
        return [self] + [Manifest(self.root, {**common, **alt}) for alt in self.data.get("alternatives", [])]

    def plan(self, plan_id: str) -> Manifest:
        for plan in self.plans:
            if plan.id == plan_id:
                return plan
        known = ", ".join(p.id for p in self.plans)
        raise BundleError(f"{self.root / MANIFEST}: no plan {plan_id!r} in this bundle ({known})")

    @property
    def checksum(self) -> str:
        """The plan checksum, or for a bundle of several plans one over all of them (for a
        source's view: over every plan of the whole bundle)."""
        if self.bundle_checksum is not None:
            return self.bundle_checksum
        plans = self.plans
        if len(plans) == 1:
            return self.data["plan_sha256"]
        return hashlib.sha256(" ".join(p.data["plan_sha256"] for p in plans).encode()).hexdigest()

    def program(self, device: str) -> list[dict[str, Any]]:
        self.device(device)
        return self.data["programs"].get(device, [])

    def path(self, device: str, file: str) -> Path:
        """Where a device's file is: in its folder of a whole bundle, or beside a lone manifest."""
        folder = self.root / device
        return (folder if folder.is_dir() else self.root) / file

    def reference_model(self) -> Path:
        return self.root / self.data["model"]["file"]

    def check_files(self, device: str | None = None) -> None:
        """sha256 of every artifact (of one device, or all) against the manifest."""
        devices = {d.name for d in self.devices}
        for rel, digest in self.data["artifacts"].items():
            owner, _, file = rel.partition("/")
            if device is not None and owner != device:
                continue
            path = self.path(owner, file) if owner in devices else self.root / rel
            try:
                actual = _sha256(path)
            except FileNotFoundError:
                raise BundleError(f"{path}: missing from the bundle; copy the whole device folder again") from None
            if actual != digest:
                raise BundleError(
                    f"{path}: sha256 differs from the manifest (file damaged or edited); "
                    "copy the bundle again or recompile"
                )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle: str | Path) -> Manifest:
    root = Path(bundle)
    path = root / MANIFEST
    if not path.exists():
        raise BundleError(f"{root}: no {MANIFEST} here; give a bundle folder written by `halpc compile`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc}); recompile the bundle") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest; recompile with this halpc version")
    for key in ("devices", "tensors", "artifacts", "programs", "inputs", "outputs", "model", "onnxruntime"):
        if key not in data:
            raise BundleError(f"{path}: manifest has no {key!r}; recompile the bundle")
    _check_structure(path, data)
    # A lone device folder copied to a board has the manifest beside its files.
    return Manifest(root, data)


def _check_structure(path: Path, data: dict[str, Any]) -> None:
    """The fields every reader relies on, with the right types (a hand-edited manifest may not)."""

    def bad(field: str, what: str) -> BundleError:
        return BundleError(f"{path}: {field} {what}; recompile the bundle")

    devices = data["devices"]
    if not isinstance(devices, list) or not devices or not all(
        isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("host"), bool)
        and isinstance(d.get("address"), str) and isinstance(d.get("threads"), int)
        for d in devices
    ):
        raise bad("devices", "must list objects with name, host, address and threads")
    hosts = [d["name"] for d in devices if d["host"]]
    sources = data.get("sources")
    if sources is None and len(hosts) != 1:
        raise bad("devices", "must have exactly one host (several only with a 'sources' object naming them)")
    if sources is not None and not (
        isinstance(sources, dict) and sorted(sources) == sorted(hosts) and all(
            isinstance(s, dict) and type(s.get("rate_hz")) in (int, float) and math.isfinite(s["rate_hz"])
            and s["rate_hz"] > 0 and isinstance(s.get("plans"), list) and s["plans"]
            and all(isinstance(p, str) for p in s["plans"])
            for s in sources.values())
    ):
        raise bad("sources", f"must give each host device ({', '.join(hosts)}) a positive rate_hz and "
                             "a list of its plan ids")
    if not isinstance(data["artifacts"], dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data["artifacts"].items()
    ):
        raise bad("artifacts", "must map file paths to sha256 digests")
    if not isinstance(data["programs"], dict) or not all(
        isinstance(p, list) for p in data["programs"].values()
    ):
        raise bad("programs", "must map device names to lists of steps")
    if not isinstance(data["tensors"], dict) or not isinstance(data["model"], dict):
        raise bad("tensors/model", "must be objects")
    alternatives = data.get("alternatives", [])
    if not isinstance(alternatives, list) or not all(
        isinstance(a, dict) and isinstance(a.get("id"), str) and isinstance(a.get("plan_sha256"), str)
        and isinstance(a.get("programs"), dict) and all(isinstance(p, list) for p in a["programs"].values())
        and all(isinstance(a.get(k), t) for k, t in (("tensors", dict), ("model", dict), ("inputs", list),
                                                     ("outputs", list), ("spatial_input", str)))
        for a in alternatives
    ):
        raise bad("alternatives", "must list plans with id, plan_sha256, programs, tensors, model, inputs and outputs")
    if not isinstance(data["onnxruntime"], str):
        raise bad("onnxruntime", "must be the ONNX Runtime version string")
    target = data.get("target", {})
    if not (isinstance(target, dict) and isinstance(target.get("arch", ""), str)
            and isinstance(target.get("nchwc", True), bool) and isinstance(target.get("optimized", False), bool)
            and type(target.get("nchwc_block", 8)) is int):
        raise bad("target", "must be an object with the target's arch (a string), nchwc and optimized (true or "
                  "false) and nchwc_block (a whole number)")
    if not all(type(d["threads"]) is int and 1 <= d["threads"] <= 4096 for d in devices):
        raise bad("devices", "threads must be a whole number from 1 to 4096")
    # Every plan's tensors, inputs, outputs and programs, as the executor and `verify` read them.
    names = {d["name"] for d in devices}

    def is_dims(v: Any) -> bool:
        return isinstance(v, list) and all(type(n) is int and n > 0 for n in v)

    def is_dtype(v: Any) -> bool:
        try:
            return isinstance(v, str) and np.dtype(v).kind in "biuf"
        except (TypeError, ValueError):
            return False

    def is_rows(v: Any) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(type(r) is int for r in v) and 0 <= v[0] <= v[1]

    def is_step(step: Any, device: str, tensors: dict[str, Any]) -> bool:
        op = step.get("op") if isinstance(step, dict) else None
        if op in ("send", "recv"):
            peer = step.get("to" if op == "send" else "from")
            return (isinstance(step.get("tensor"), str) and step["tensor"] in tensors and is_rows(step.get("rows"))
                    and isinstance(peer, str) and peer in names)
        if op in ("run", "tail"):
            kind = dict if op == "run" else list
            return (isinstance(step.get("model"), str) and f"{device}/{step['model']}" in data["artifacts"]
                    and isinstance(step.get("inputs"), kind) and isinstance(step.get("outputs"), kind)
                    and all(isinstance(t, str) for t in [*step["inputs"], *step["outputs"]])
                    and (op == "tail" or all(is_rows(r) for r in [*step["inputs"].values(), *step["outputs"].values()])))
        return op == "output" and isinstance(step.get("tensors"), list) and all(isinstance(t, str) for t in step["tensors"])

    source_of = {}  # plan id -> its source
    for at, plan in [("", data), *((f"alternatives[{i}].", a) for i, a in enumerate(alternatives))]:
        if not isinstance(plan.get("id", "default"), str):
            raise bad(f"{at}id", "must be the plan's name, a string")
        if sources is not None or "host" in plan:
            if plan.get("host") not in hosts:
                raise bad(f"{at}host", f"must name the source that holds the plan's input and output "
                                       f"(one of {', '.join(hosts)})")
        source_of[plan.get("id", "default")] = plan.get("host", hosts[0])
        tensors = plan["tensors"]
        if not all(isinstance(t, dict) and is_dims(t.get("shape")) and is_dtype(t.get("dtype"))
                   and type(t.get("row_axis")) is int and 0 <= t["row_axis"] < len(t["shape"])
                   for t in tensors.values()):
            raise bad(f"{at}tensors", "must give each tensor's shape, dtype and row_axis")
        if not isinstance(plan.get("spatial_input"), str) or plan["spatial_input"] not in tensors:
            raise bad(f"{at}spatial_input", "must name one of the tensors")
        if not isinstance(plan["model"].get("file"), str) or plan["model"]["file"] not in data["artifacts"]:
            raise bad(f"{at}model.file", "must be the reference model's path in the bundle (one of its artifacts)")
        if not isinstance(plan["inputs"], list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) and is_dims(i.get("shape")) and is_dtype(i.get("dtype"))
            for i in plan["inputs"]
        ) or not isinstance(plan["outputs"], list) or not plan["outputs"] or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in plan["outputs"]
        ):
            raise bad(f"{at}inputs/outputs", "must list objects with name (and for inputs shape and dtype), "
                      "at least one output")
        for device, program in plan["programs"].items():
            if device not in names:
                raise bad(f"{at}programs.{device}", "is not a device of the bundle")
            if program and device in hosts and device != source_of[plan.get("id", "default")]:
                raise bad(f"{at}programs.{device}", "is another source's: a plan runs on its source and helpers")
            for s, step in enumerate(program):
                if not is_step(step, device, tensors):
                    raise bad(f"{at}programs.{device}[{s}]", "is not a well-formed step (send, recv, run, tail or output)")
    for name, source in (sources or {}).items():
        if any(source_of.get(p) != name for p in source["plans"]):
            raise bad(f"sources.{name}.plans", f"must name plans of {name} (plans: {', '.join(source_of)})")
