"""Programs saved by DSPy (2.6 and 3.x, ``program.save("p.json")``, i.e. ``save_program=False``),
read into the matching asynclm program, so an optimized DSPy program migrates without being
optimized again.

A DSPy file maps each predictor's name (DSPy's ``named_parameters()``) to its state:
``instructions``, one ``{"prefix", "description"}`` per field (inputs then outputs, in signature
order), and ``demos`` (dicts; bootstrapped ones carry ``"augmented": true``), plus ``traces``,
``train`` and ``lm``, and a top-level ``metadata``. DSPy keeps a ``ChainOfThought``'s predictor
under ``<name>.predict``; asynclm's ``ChainOfThought`` *is* the predictor, so that suffix is
dropped. The LM state is never read: LMs and keys are not part of a program here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from asynclm.signatures import Example, Signature

from ._module import _FORMAT, ProgramFileError

__all__ = ["from_dspy_state", "is_dspy_state"]

_PLACEHOLDER = re.compile(r"^\$\{.*\}$")  # DSPy's default description: "${field_name}"


def _is_predictor_state(value: Any) -> bool:
    return isinstance(value, Mapping) and "signature" in value and "demos" in value


def _entries(state: Mapping[str, Any]) -> dict[str, Any]:
    """Predictor name -> state. A program that is a single ``Predict`` is saved flat by DSPy."""
    if _is_predictor_state(state):
        return {"self": {k: v for k, v in state.items() if k != "metadata"}}
    return {k: v for k, v in state.items() if k != "metadata"}


def is_dspy_state(state: Any) -> bool:
    """Whether ``state`` looks like a program saved by DSPy (and not by asynclm)."""
    if not isinstance(state, Mapping) or "format" in state:
        return False
    entries = _entries(state)
    return bool(entries) and all(_is_predictor_state(v) for v in entries.values())


def _dspy_prefix(name: str) -> str:
    """The prefix DSPy derives from a field name ("question" -> "Question:", "sqlQuery" -> "Sql
    Query:", "text2sql" -> "Text 2 Sql:"): a prefix equal to it was never customised."""
    spaced = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    spaced = re.sub(r"([a-zA-Z])(\d)", r"\1_\2", spaced)
    spaced = re.sub(r"(\d)([a-zA-Z])", r"\1_\2", spaced)
    words = [w if w.isupper() else w.capitalize() for w in spaced.split("_") if w]
    return " ".join(words) + ":"


def _our_name(dspy_name: str) -> str:
    if dspy_name == "predict":
        return "self"
    return dspy_name.removesuffix(".predict")


def _signature(ours: Signature, saved: Any, where: str) -> Signature:
    if not isinstance(saved, Mapping) or not isinstance(saved.get("fields"), list):
        raise ProgramFileError(f"{where}: the DSPy signature state needs 'instructions' and 'fields'")
    fields = list(ours.fields.values())
    if len(saved["fields"]) != len(fields):
        raise ProgramFileError(
            f"{where}: the DSPy file has {len(saved['fields'])} fields but this predictor's signature "
            f"{ours.signature!r} has {len(fields)}: load it into the program it was saved from"
        )
    sig = ours
    instructions = saved.get("instructions")
    if isinstance(instructions, str) and instructions.strip() and instructions != ours.instructions:
        sig = sig.with_instructions(instructions)
    for field, entry in zip(fields, saved["fields"], strict=True):
        if not isinstance(entry, Mapping):
            raise ProgramFileError(f"{where}: a field's state must be an object with 'prefix' and 'description'")
        changes: dict[str, Any] = {}
        desc = entry.get("description")
        if isinstance(desc, str) and desc and not _PLACEHOLDER.match(desc):
            changes["desc"] = desc
        prefix = entry.get("prefix")
        if isinstance(prefix, str) and prefix and prefix != _dspy_prefix(field.name):
            changes["prefix"] = prefix
        if changes:
            sig = sig.with_updated_fields(field.name, **changes)
    return sig


def _demo(demo: Any, where: str) -> dict[str, Any]:
    if not isinstance(demo, Mapping):
        raise ProgramFileError(f"{where}: a demo must be an object of field values, got {type(demo).__name__}")
    values = {k: v for k, v in demo.items() if k != "augmented"}  # DSPy's mark of a bootstrapped demo
    return Example(values).to_json_dict()


def from_dspy_state(program: Any, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a DSPy program file) as an asynclm program state for ``program`` (its
    ``load_state`` then applies it, all or nothing). Raises ``ProgramFileError`` on a mismatch."""
    mine = dict(program.named_predictors())
    saved = {_our_name(k): (k, v) for k, v in _entries(state).items()}
    if set(saved) != set(mine):
        raise ProgramFileError(
            f"the DSPy file has predictors {sorted(k for k, _ in saved.values())} but {type(program).__name__} has "
            f"{sorted(mine)} (a DSPy '<name>.predict' is asynclm's '<name>'): load it into the matching program"
        )
    predictors: dict[str, Any] = {}
    for name, (dspy_name, entry) in saved.items():
        where = f"predictor {dspy_name!r}"
        demos = entry.get("demos") or []
        if not isinstance(demos, list):
            raise ProgramFileError(f"{where}: 'demos' must be a list")
        predictors[name] = {
            "signature": _signature(mine[name].signature, entry.get("signature"), where).to_dict(),
            "demos": [_demo(d, where) for d in demos],
        }
    return {"format": _FORMAT, "program": type(program).__qualname__, "predictors": predictors}
