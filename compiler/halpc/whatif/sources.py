"""How several sources share the helper nodes: `halpc plan` and `halpc simulate` for a cluster of sources.

Per source the simulated mean and p95 frame latency of every strategy (`planner.matching`:
the matching and its baselines alone, selfish, greedy, random), and for the matching where each
partition went, its exchange rounds and the nodes' utilisation: as text (`sources_table`), as
JSON (`sharing_json`) and as one self-contained HTML page (`write_sources_report`: inline CSS
and SVG, nothing fetched). `halpc plan` cuts the sources' models itself (`plan_sharing`);
`halpc simulate` replays a compiled bundle's own partitions, rebuilt from its manifest
(`sharing_from_manifest`, `simulate_sharing`), without the models.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from halpc.inputs.cluster import Cluster
from halpc.errors import HalpcError, UsageError
from halpc.planner import matching as game
from halpc.planner.sources import Cutting, SourcesPlan, compare_sources

STRATEGIES = game.STRATEGIES  # matching, alone, selfish, greedy, random: the tables' order
MAX_FRAMES = 1_000_000  # simulated frames of all sources together



def check_horizon(horizon_s: float, sources: Sequence[float]) -> None:
    """A usage error unless `horizon_s` is a positive number of seconds that keeps the
    simulation under MAX_FRAMES frames (`sources`: their rates, Hz)."""
    if not 0 < horizon_s < math.inf:
        raise UsageError(f"{horizon_s}: give a positive number of seconds, e.g. 20", option="horizon_s")
    frames = horizon_s * sum(sources)
    if frames > MAX_FRAMES:
        raise UsageError(f"{horizon_s:g} s makes {frames:,.0f} frames at the sources' rates; "
                         f"keep it under {MAX_FRAMES:,} frames", option="horizon_s")


def plan_sharing(cluster: Cluster, input_shapes: Mapping | None, strategy: str = "all", horizon_s: float = 20.0,
                 arrivals: str = "periodic") -> tuple[list[dict[str, Any]], dict[str, SourcesPlan]]:
    """`compare_sources` over the cluster's own models: every strategy (`all`) or one."""
    from halpc.compile import load_sources

    if strategy != "all" and strategy not in STRATEGIES:
        raise UsageError(f"{strategy} plans one host; {cluster.source} has several sources: "
                         f"choose all or one of {', '.join(STRATEGIES)}", option="strategy")
    check_horizon(horizon_s, [s.rate_hz or 0.0 for s in cluster.sources])
    trunks = load_sources(cluster, dict(input_shapes or {}))
    return compare_sources(cluster, trunks, horizon_s, arrivals=arrivals,
                           strategies=STRATEGIES if strategy == "all" else (strategy,))


def sharing_from_manifest(data: Mapping[str, Any], where: str = "manifest.json"
                          ) -> tuple[list[game.Source], list[game.Node], Any]:
    """A bundle's sources (its partitions exactly as recorded), nodes and links (`cluster_link`
    of its cluster), from the manifest's "sharing" and "cluster"."""
    sharing = data.get("sharing")
    if not sharing:
        raise HalpcError(f"{where}: no record of how the sources share the helpers (compiled with a one-host "
                         "strategy?); compile it with the matching strategy (or alone, selfish, greedy, random)")
    try:
        sources = [game.Source(name, float(s["rate_hz"]),
                               [game.Partition(name, k, float(p["gmac"]), float(p["in_bytes"]), float(p["out_bytes"]))
                                for k, p in enumerate(s["partitions"])], float(s["gather_ms"]))
                   for name, s in sharing["sources"].items()]
        nodes = [game.Node(str(n["name"]), float(n["gmacs"])) for n in sharing["nodes"]]
        link = game.cluster_link(Cluster.from_dict(data["cluster"], where))
        game.greedy(sources, nodes, link)  # checks that every partition may run somewhere, every link
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(where, exc) from None
    return sources, nodes, link


def _damaged(where: str, exc: Exception) -> HalpcError:
    return HalpcError(f"{where}: damaged \"sharing\" record ({type(exc).__name__}: {exc}); compile the bundle again")


def simulate_sharing(data: Mapping[str, Any], horizon_s: float = 20.0, arrivals: str = "periodic",
                     where: str = "manifest.json", seed: int = 0
                     ) -> tuple[list[dict[str, Any]], dict[str, SourcesPlan]]:
    """`matching.compare` over a bundle's own partitions (every strategy), and the matching of
    them as a SourcesPlan (cuts and rows as recorded) for the tables."""
    sources, nodes, link = sharing_from_manifest(data, where)
    check_horizon(horizon_s, [s.rate_hz for s in sources])
    rows = game.compare(sources, nodes, link, horizon_s, seed, arrivals)
    m = game.match(sources, nodes, link, seed)
    recorded = data["sharing"]["sources"]
    cuttings = {}
    for s in sources:
        parts = recorded[s.name]["partitions"]
        try:
            bounds = tuple(int(p["rows"][0]) for p in parts) + (int(parts[-1]["rows"][1]),)
            cut = int(recorded[s.name]["cut"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise _damaged(where, exc) from None
        cuttings[s.name] = Cutting(s.name, cut, bounds, s.partitions, s.gather_ms / 1e3)
    plan = SourcesPlan("matching", cuttings, tuple(sources), tuple(nodes), m.assignment, m, {}, m)
    return rows, {"matching": plan}


def sharing_json(rows: Sequence[Mapping[str, Any]], planned: Mapping[str, SourcesPlan]) -> dict[str, Any]:
    return {"rows": list(rows), "plans": {name: sp.to_dict() for name, sp in planned.items()}}
