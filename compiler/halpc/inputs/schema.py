"""From a pydantic ValidationError to halpc's one-line error: the file, the field, what to do.

The input files (cluster, plan, device profile) declare their shape as pydantic models instead of
hand-written walkers. A person reads the error, so pydantic's own wording is not what they see:
each file gives, per field, one sentence saying what the value must be and what to write instead
(a :class:`Rule`), and the first error pydantic finds (fields are checked in document order)
becomes that sentence, after the file and the field's place (``device[2].gmacs``,
``blocks[0].strips[1].rows``). No traceback, one line, a :class:`~halpc.errors.HalpcError`.
"""
from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from halpc.errors import HalpcError

__all__ = ["Rule", "check_keys", "clip", "one_line", "one_line_error"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Rule:
    """What one field must be, for people.

    ``text`` may use ``{got}`` (the field's value as the file spells it) and ``{why}`` (the
    reason a check gave, e.g. why an address is not one); ``missing`` replaces it when the field
    is left out, ``empty`` when it is an empty list that must not be.
    """

    text: str
    missing: str | None = None
    empty: str | None = None


def check_keys(model: type[BaseModel], data: Any) -> None:
    """Refuse a key ``model`` does not know, before its fields are checked.

    A misspelt key would otherwise pass as an unknown one; the error names the known keys and the
    closest of them. Raised from a ``mode="before"`` validator, it is the table's only error, so
    a typo is reported before the errors it causes (a "missing" field that is only misspelt).
    """
    if isinstance(data, Mapping):
        known = tuple(sorted(field.alias or name for name, field in model.model_fields.items()))
        for key in data:
            if key not in known:
                raise PydanticCustomError("unknown_key", "unknown key", {"key": key, "known": known})


def one_line_error(exc: ValidationError, doc: Any, source: str, rules: Mapping[str, Rule], *,
                   show: Callable[[Any], str], first_index: int = 0) -> HalpcError:
    """The first error of ``exc`` as ``"SOURCE: FIELD: PROBLEM"``.

    ``rules`` are keyed by the field's pattern, list positions written ``[]``
    (``"device[].gmacs"``; ``""`` is the document itself); an error inside a field without a rule
    of its own (an item of ``between``, a key of ``input_shapes``) is reported at the closest
    field that has one, with that field's whole value. ``show`` spells values as the file does;
    ``first_index`` numbers list items (1 where people count tables, 0 in JSON).
    """
    error = exc.errors(include_url=False)[0]
    loc: Loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == "unknown_key":
        problem = unknown_key_message(ctx["key"], ctx["known"], "field" if loc else "top-level key")
    else:
        loc = next((loc[:n] for n in range(len(loc), -1, -1) if field_name(loc[:n], None) in rules), loc)
        rule = rules.get(field_name(loc, None))
        value = _lookup(doc, loc)
        if rule is None:
            problem = _why(error)
        elif error["type"] == "missing" and rule.missing is not None:
            problem = rule.missing
        elif error["type"] == "too_short" and value == [] and rule.empty is not None:
            problem = rule.empty
        else:
            problem = rule.text.format(got=show(value), why=_why(error))
    where = field_name(loc, first_index)
    return HalpcError(one_line(f"{source}: {where}: {problem}" if where else f"{source}: {problem}"))


def field_name(loc: Loc, first_index: int | None = 0) -> str:
    """``("device", 1, "gmacs")`` as ``device[2].gmacs`` (with ``first_index`` 1); list positions
    as ``[]`` with ``first_index`` None, the pattern that :class:`Rule` tables are keyed by."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += "[]" if first_index is None else f"[{part + first_index}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def unknown_key_message(key: Any, known: tuple[str, ...], what: str) -> str:
    """``unknown field 'gmac' (known: ...); did you mean 'gmacs'?``"""
    shown = f"'{key}'" if isinstance(key, str) and key.isprintable() and "'" not in key \
        else clip(json.dumps(str(key), ensure_ascii=False))
    message = f"unknown {what} {shown} (known: {', '.join(sorted(known))})"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    return message + (f"; did you mean '{close[0]}'?" if close else "; remove it or fix its spelling")


def clip(text: str, limit: int = 80) -> str:
    """A value's spelling, cut to fit in a one-line message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text)


def _lookup(doc: Any, loc: Loc) -> Any:
    """The value at ``loc`` in the document as read (None where there is none)."""
    for part in loc:
        in_list = isinstance(doc, list) and isinstance(part, int) and 0 <= part < len(doc)
        if not (in_list or (isinstance(doc, Mapping) and part in doc)):
            return None
        doc = doc[part]
    return doc


def _why(error: ErrorDetails) -> str:
    """The reason pydantic gives: a check's own ValueError text, else its message in our words."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    return error["msg"].replace("Input should be a valid", "must be a").replace("Input should be", "must be")
