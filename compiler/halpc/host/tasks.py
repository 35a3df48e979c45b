"""What a run of a bundle takes and gives: its tasks' inputs, where outputs go, the frame period
and the policy by default."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from halpc.errors import HalpcError
from halpc.host.verify import load_inputs, random_inputs
from halpc_stub.manifest import Manifest


def task_inputs(manifest: Manifest, input_file: str | Path | None, tasks: int) -> list[dict[str, np.ndarray]]:
    """The inputs of `tasks` tasks: the file's for every task, else seeded random ones, one per task."""
    if input_file is not None:
        return [load_inputs(manifest, Path(input_file))] * tasks
    return [random_inputs(manifest, seed) for seed in range(tasks)]


def default_policy(manifest: Manifest, deadline_ms: float | None) -> str | None:
    """select for variants with a deadline, adaptive for several plans, none for one plan."""
    plans = manifest.plans
    if len(plans) == 1:
        return None
    variants = {p.data.get("variant") for p in plans}
    return "select" if deadline_ms and len(variants) > 1 else "adaptive"


def frame_period_ms(whole: Manifest, source_view: Manifest) -> float | None:
    """A source of a bundle of several takes frames at its rate; a one-host bundle has no period."""
    if not whole.sources:
        return None
    return 1000 / whole.data["sources"][source_view.host.name]["rate_hz"]


def check_output_path(path: str | Path, outputs: int) -> None:
    """Before the run: the outputs of a model with one output go to .npy, of several to .npz."""
    suffix = ".npy" if outputs == 1 else ".npz"
    if not str(path).endswith(suffix):
        raise HalpcError(f"{path}: the model has {outputs} output(s); give a {suffix} path", option="output_file")


def save_outputs(path: str | Path, outputs: dict[str, np.ndarray]) -> None:
    try:
        if len(outputs) == 1:
            np.save(path, next(iter(outputs.values())))
        else:
            np.savez(path, **outputs)
    except OSError as exc:
        raise HalpcError(f"{path}: cannot write the outputs ({exc.strerror or exc})", option="output_file") from None
