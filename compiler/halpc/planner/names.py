"""Names of the planning strategies (kept apart so the CLI can list them without loading ONNX)."""
from __future__ import annotations

STRATEGIES = ("local", "even", "modnn", "ftp", "dpfp", "halp", "exhaustive")
SOURCE_STRATEGIES = ("matching",)  # a cluster of several sources sharing helpers (planner.sources)
SOURCE_BASELINES = ("alone", "selfish", "greedy", "random")  # what `halpc plan` compares the matching with
