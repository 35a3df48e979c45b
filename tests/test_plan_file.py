"""The plan file read back (halpc.planner.plan_file): its schema, its checks against the trunk and
the cluster, and one-line errors that name the field, on a small MobileNet (no compile needed)."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models  # examples/models.py
import pytest
from bundles import save, trunk_of
from halpc.analyse.trunk import Trunk
from halpc.errors import HalpcError
from halpc.planner.plan import even_plan
from halpc.planner.plan_file import load_plan, plan_from_json

DEVICES = ["host", "dev-1", "dev-2"]


@pytest.fixture(scope="module")
def trunk(tmp_path_factory: pytest.TempPathFactory) -> Trunk:
    folder = tmp_path_factory.mktemp("plan_file")
    return trunk_of(save(models.build("mobilenet_v1_025", height=32, width=32), folder))


@pytest.fixture(scope="module")
def good(trunk: Trunk) -> dict[str, Any]:
    return even_plan(trunk, DEVICES).to_json(trunk)


def error(data: Any, trunk: Trunk) -> str:
    with pytest.raises(HalpcError) as info:
        plan_from_json(data, trunk, DEVICES, source="p.json")
    message = str(info.value)
    assert "\n" not in message and info.value.option is None, message
    return message


def test_round_trip(trunk: Trunk, good: dict[str, Any], tmp_path: Path) -> None:
    plan = even_plan(trunk, DEVICES)
    (tmp_path / "plan.json").write_text(plan.dumps(trunk))
    again = load_plan(tmp_path / "plan.json", trunk, DEVICES)
    assert again == plan and again.checksum(trunk) == plan.checksum(trunk)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return edit


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        del doc[path[-1]]
    return edit


# (case id, edit of the good plan, the message's start after "p.json: ", a word it must contain)
CASES = [
    ("schema", _set(("schema",), "halpc-plan/2"), "schema: ", "halpc-plan/1"),
    ("sha256-other", _set(("model", "sha256"), "0" * 64), "model.sha256: ", "another model file"),
    ("sha256-number", _set(("model", "sha256"), 5), "model.sha256: ", "got 5"),
    ("model-missing", _drop(("model",)), "model: ", "sha256"),
    ("shapes-list", _set(("model", "input_shapes"), [1, 3, 32, 32]), "model.input_shapes: ", "input name -> [dims]"),
    ("shapes-text-dims", _set(("model", "input_shapes", "input"), [1, "3", 32, 32]), "model.input_shapes: ", "[dims]"),
    ("shapes-other", _set(("model", "input_shapes", "input"), [1, 3, 64, 64]), "model.input_shapes: ", "1x3x64x64"),
    ("blocks-empty", _set(("blocks",), []), "blocks: ", "non-empty list"),
    ("block-not-object", _set(("blocks", 1), "b"), "blocks[1]: ", "from, to and strips"),
    ("from-other", _set(("blocks", 1, "from"), "input"), "blocks[1].from: ", "follow each other"),
    ("from-missing", _drop(("blocks", 0, "from")), "blocks[0].from: ", "missing"),
    ("to-list", _set(("blocks", 0, "to"), ["x"]), "blocks[0].to: ", "cut tensor"),
    ("to-unknown", _set(("blocks", 0, "to"), "nope"), "blocks[0].to: ", "'nope' is not a cut point"),
    ("rows-of-other", _set(("blocks", 0, "rows_of"), "input"), "blocks[0].rows_of: ", "those of"),
    ("rows-of-null", _set(("blocks", 0, "rows_of"), None), "blocks[0].rows_of: ", "those of"),
    ("strips-empty", _set(("blocks", 0, "strips"), []), "blocks[0].strips: ", "{device, rows}"),
    ("strip-not-object", _set(("blocks", 0, "strips", 2), 7), "blocks[0].strips[2]: ", "device and rows"),
    ("device-ghost", _set(("blocks", 0, "strips", 1, "device"), "ghost"), "blocks[0].strips[1].device: ", "'ghost'"),
    ("device-number", _set(("blocks", 0, "strips", 1, "device"), 1), "blocks[0].strips[1].device: ", "device name"),
    ("rows-bool", _set(("blocks", 0, "strips", 0, "rows"), [False, 6]), "blocks[0].strips[0].rows: ", "[start, stop]"),
    ("rows-three", _set(("blocks", 0, "strips", 0, "rows"), [0, 3, 6]), "blocks[0].strips[0].rows: ", "[start, stop]"),
    ("rows-gap", _set(("blocks", 0, "strips", 1, "rows", 0), 7), "blocks[0].strips[1].rows: ", "gaps"),
    ("exchange", _set(("exchange",), "broadcast"), "exchange: ", "'broadcast'"),
    ("predicted", _set(("predicted",), "fast"), "predicted: ", "object or null"),
]


@pytest.mark.parametrize(("edit", "start", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_names_the_field(trunk: Trunk, good: dict[str, Any], edit: Callable[[dict[str, Any]], None],
                               start: str, needle: str) -> None:
    data = copy.deepcopy(good)
    edit(data)
    message = error(data, trunk)
    assert message.startswith("p.json: " + start), message
    assert needle in message, message


def test_not_an_object_is_a_schema_error(trunk: Trunk, good: dict[str, Any]) -> None:
    assert error([good], trunk).startswith("p.json: schema: expected 'halpc-plan/1'")


def test_what_is_only_for_reading_stays_lenient(trunk: Trunk, good: dict[str, Any]) -> None:
    """Plans read as they always have: unknown keys and the keys for people are not checked, a
    strategy that is not a name reads as "manual", an empty `predicted` as none, `to` may be left
    out on the last block."""
    data = copy.deepcopy(good)
    data["comment"] = "hand-edited"
    data["strategy"] = 3
    data["predicted"] = []
    data["blocks"][0]["layers"] = "whatever"
    data["blocks"][0]["note"] = {"a": 1}
    del data["blocks"][-1]["to"]
    plan = plan_from_json(data, trunk, DEVICES)
    assert plan.strategy == "manual" and plan.predicted == {}
    assert plan.blocks == even_plan(trunk, DEVICES).blocks


def test_load_plan_errors(tmp_path: Path, trunk: Trunk) -> None:
    with pytest.raises(HalpcError, match="no such plan file"):
        load_plan(tmp_path / "nope.json", trunk, DEVICES)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HalpcError, match="not a readable JSON plan"):
        load_plan(tmp_path / "bad.json", trunk, DEVICES)
    (tmp_path / "p.json").write_text(json.dumps({"schema": "halpc-plan/1"}))
    with pytest.raises(HalpcError, match=r"p\.json: model: "):
        load_plan(tmp_path / "p.json", trunk, DEVICES)
