"""``JSONAdapter``: outputs as one JSON object, with a JSON schema for structured-output servers."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from typing import Any, cast

from asynclm.signatures import Signature, SignatureField

from ._base import Adapter, SignatureLike, field_type_note
from ._chat import _STRUCTURE_INTRO, field_blocks
from ._errors import ParseError
from ._values import describe_error, strip_fence, to_jsonable, validate_json_value

_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")


def _load_object(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text``: strict JSON first (fast path), then inside a code fence or
    between the first ``{`` and the last ``}``, then repaired by ``json_repair`` (trailing commas,
    missing quotes or brackets, a cut-off answer)."""
    candidates = [text.strip()]
    fenced = strip_fence(candidates[0])
    if fenced != candidates[0]:
        candidates.append(fenced)
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    import json_repair

    for c in (*candidates[1:], text) if start != -1 else (text,):
        try:
            obj = json_repair.loads(c[c.find("{") :] if "{" in c else c)
        except Exception:  # json_repair is best effort; any failure means "no object here"
            continue
        if isinstance(obj, dict) and obj:
            return obj
    return None


def _strictify(schema: Any) -> bool:
    """Make a pydantic JSON schema acceptable to OpenAI strict structured outputs in place
    (every object lists all its properties as required and forbids others). Returns False if
    impossible (an open-ended ``dict[str, T]`` object)."""
    ok = True
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties")
            if props is None or isinstance(schema.get("additionalProperties"), dict):
                ok = False
            else:
                schema["required"] = list(props)
                schema["additionalProperties"] = False
        for value in list(schema.values()):
            ok = _strictify(value) and ok
    elif isinstance(schema, list):
        for value in schema:
            ok = _strictify(value) and ok
    return ok


class JSONAdapter(Adapter):
    """Asks for the outputs as one JSON object (DSPy's JSONAdapter prompt layout).

    ``response_format`` gives the OpenAI ``{"type": "json_schema", ...}`` parameter built from
    a pydantic model of the output fields (``strict`` when the schema allows it), for servers that
    constrain decoding to a schema. ``parse`` accepts the object bare, in a code fence, with
    text around it, or slightly broken (repaired with ``json_repair``).
    """

    def format_field_structure(self, signature: Signature) -> str:
        outputs = {n: field_type_note(f) for n, f in signature.output_fields.items()}
        return "\n\n".join(
            [
                _STRUCTURE_INTRO,
                "Inputs will have the following structure:",
                field_blocks({n: field_type_note(f) for n, f in signature.input_fields.items()}),
                "Outputs will be a JSON object with the following fields.",
                json.dumps(outputs, indent=2, ensure_ascii=False),
            ]
        ).strip()

    def user_message_output_requirements(self, signature: Signature) -> str:
        def type_info(f: SignatureField) -> str:
            return f" (must be formatted as a valid Python {f.type_name})" if f.annotation is not str else ""

        return (
            "Respond with a JSON object in the following order of fields: "
            + ", then ".join(f"`{n}`{type_info(f)}" for n, f in signature.output_fields.items())
            + "."
        )

    def format_assistant_message_content(
        self, signature: Signature, outputs: Mapping[str, Any], missing_field_message: str | None = None
    ) -> str:
        obj: dict[str, Any] = {}
        for name in signature.output_fields:
            if name in outputs:
                obj[name] = to_jsonable(outputs[name])
            elif missing_field_message is not None:
                obj[name] = missing_field_message
        return json.dumps(obj, indent=2, ensure_ascii=False)

    def parse(self, signature: SignatureLike, completion: str) -> dict[str, Any]:
        sig = Signature.ensure(signature)
        obj = _load_object(completion)
        if obj is None:
            raise ParseError(
                "the response does not contain a JSON object; answer with one JSON object whose keys are "
                + ", ".join(f"`{n}`" for n in sig.output_fields),
                adapter=type(self).__name__,
                raw=completion,
            )
        values: dict[str, Any] = {}
        failure: ParseError | None = None
        for name, f in sig.output_fields.items():
            if name not in obj:
                continue
            try:
                values[name] = validate_json_value(f, obj[name])
            except ValueError as exc:
                if failure is None:
                    shown = json.dumps(obj[name], ensure_ascii=False)
                    shown = shown if len(shown) <= 200 else shown[:200] + "..."
                    failure = ParseError(
                        f"the value {shown} is not a valid {f.type_name}: {describe_error(exc)}",
                        adapter=type(self).__name__,
                        raw=completion,
                        field=name,
                    )
        missing = [n for n in sig.output_fields if n not in obj]
        if missing:
            raise ParseError(
                f"the JSON object lacks the key(s) {', '.join(missing)}",
                adapter=type(self).__name__,
                raw=completion,
                field=missing[0],
                parsed=values,
            )
        if failure is not None:
            failure.parsed = values
            raise failure
        return values

    # -- structured outputs ---------------------------------------------------------------------

    def output_schema(self, signature: SignatureLike) -> dict[str, Any]:
        """The JSON schema of the output object (a fresh copy; cached per signature)."""
        sig = Signature.ensure(signature)
        schema = sig.memo("json-output-schema", lambda: _output_schema(sig))
        return cast("dict[str, Any]", json.loads(json.dumps(schema)))

    def response_format(self, signature: SignatureLike) -> dict[str, Any]:
        """OpenAI's ``{"type": "json_schema", "json_schema": {"name", "strict", "schema"}}``.
        ``strict`` is False when an output is an open-ended mapping (``dict[str, T]``), which
        strict mode cannot express."""
        sig = Signature.ensure(signature)

        def build() -> dict[str, Any]:
            schema = _output_schema(sig)
            strict = _strictify(schema)
            name = _NAME_OK.sub("_", sig.name or "outputs")[:64] or "outputs"
            return {"type": "json_schema", "json_schema": {"name": name, "strict": strict, "schema": schema}}

        return cast("dict[str, Any]", json.loads(json.dumps(sig.memo("json-response-format", build))))

    def stream_fields(self, signature: SignatureLike, partial: str) -> list[tuple[str, str]]:
        """Output keys begun in a partial JSON object with their value so far: string values
        decoded (an unfinished escape held back), other values as their raw JSON text."""
        sig = Signature.ensure(signature)
        return [(k, v) for k, v in _scan_partial_object(partial) if k in sig.output_fields]


def _output_schema(sig: Signature) -> dict[str, Any]:
    import pydantic

    fields: dict[str, Any] = {}
    for name, f in sig.output_fields.items():
        fields[name] = (f.validation_type, pydantic.Field(..., description=f.desc) if f.desc else ...)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # field names such as "schema" shadow BaseModel attributes
        model = pydantic.create_model(
            _NAME_OK.sub("_", sig.name or "Outputs"),
            __config__=pydantic.ConfigDict(extra="forbid", protected_namespaces=()),
            **fields,
        )
    return dict(model.model_json_schema())


# -- incremental reading of a partial JSON object (for streaming) ------------------------------


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t\r\n,":
        i += 1
    return i


def _read_string(s: str, i: int) -> tuple[str, int, bool]:
    """Decode the JSON string starting at ``s[i] == '"'``: (text, index after it, finished)."""
    j = i + 1
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            try:
                return json.loads(s[i : j + 1]), j + 1, True
            except ValueError:
                return s[i + 1 : j], j + 1, True
        j += 1
    body = s[i + 1 :]
    # Hold back an unfinished escape (a lone trailing backslash or a short \u sequence).
    m = re.search(r"\\(u[0-9a-fA-F]{0,3})?$", body)
    if m:
        upto = body[: m.start() + 1]
        if (len(upto) - len(upto.rstrip("\\"))) % 2 == 1:  # the backslash starts an escape
            body = body[: m.start()]
    m = re.search(r"\\u[dD][89abAB][0-9a-fA-F]{2}$", body)  # a high surrogate waiting for its pair
    if m:
        body = body[: m.start()]
    try:
        return json.loads('"' + body + '"'), n, False
    except ValueError:
        return body, n, False


def _scan_value(s: str, i: int) -> tuple[int, bool]:
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            _, i, done = _read_string(s, i)
            if not done:
                return n, False
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            if depth == 0:
                return i, True
            depth -= 1
        elif c == "," and depth == 0:
            return i, True
        i += 1
    return n, False


def _scan_partial_object(s: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = s.find("{")
    if i < 0:
        return out
    i += 1
    n = len(s)
    while True:
        i = _skip_ws(s, i)
        if i >= n or s[i] != '"':
            return out
        key, i, done = _read_string(s, i)
        if not done:
            return out
        while i < n and s[i] in " \t\r\n":
            i += 1
        if i >= n or s[i] != ":":
            return out
        i = _skip_ws(s, i + 1)
        if i >= n:
            out.append((key, ""))
            return out
        if s[i] == '"':
            value, i, done = _read_string(s, i)
            out.append((key, value))
        else:
            start = i
            i, done = _scan_value(s, i)
            out.append((key, s[start:i].strip()))
        if not done:
            return out
