"""``ChatAdapter``: DSPy's ``[[ ## field ## ]]`` text format."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from asynclm.signatures import Signature, SignatureField

from ._base import Adapter, SignatureLike, field_type_note
from ._errors import ParseError
from ._values import HEADER_LINE, describe_error, format_output_value, parse_text

_STRUCTURE_INTRO = "All interactions will be structured in the following way, with the appropriate values filled in."
_HEADER_OPEN = "[[ ## "
_HEADER_CLOSE = " ## ]]"
_WORD = re.compile(r"\w*")


def field_blocks(values: Mapping[str, str]) -> str:
    return "\n\n".join(f"[[ ## {name} ## ]]\n{text}" for name, text in values.items()).strip()


def _may_become_header(line: str) -> bool:
    """Whether an unfinished last line could still turn into a ``[[ ## name ## ]]`` marker."""
    t = line.lstrip(" \t")
    if len(t) <= len(_HEADER_OPEN):
        return _HEADER_OPEN.startswith(t)
    if not t.startswith(_HEADER_OPEN):
        return False
    rest = t[len(_HEADER_OPEN) :]
    after = rest[_WORD.match(rest).end() :]  # type: ignore[union-attr]  # \w* always matches
    return _HEADER_CLOSE.startswith(after)


class ChatAdapter(Adapter):
    """The default adapter: DSPy's ChatAdapter format, byte for byte, so prompts and demos migrate.

    The system message lists the input and output fields with their types, shows the structure
    (``[[ ## name ## ]]`` followed by the value, ending with ``[[ ## completed ## ]]``) and the
    instructions; the last user turn repeats the output format and each output's expected type.
    Non-string values are written as JSON. ``parse`` reads the first ``[[ ## name ## ]]``
    section of each output field (a marker is a line that starts with it, after whitespace),
    strips it and converts it to the field's type (see ``asynclm.adapters.parse_text``).
    """

    def format_field_structure(self, signature: Signature) -> str:
        return "\n\n".join(
            [
                _STRUCTURE_INTRO,
                field_blocks({n: field_type_note(f) for n, f in signature.input_fields.items()}),
                field_blocks({n: field_type_note(f) for n, f in signature.output_fields.items()}),
                "[[ ## completed ## ]]\n",
            ]
        ).strip()

    def user_message_output_requirements(self, signature: Signature) -> str:
        def type_info(f: SignatureField) -> str:
            return f" (must be formatted as a valid Python {f.type_name})" if f.annotation is not str else ""

        return (
            "Respond with the corresponding output fields, starting with the field "
            + ", then ".join(f"`[[ ## {n} ## ]]`{type_info(f)}" for n, f in signature.output_fields.items())
            + ", and then ending with the marker for `[[ ## completed ## ]]`."
        )

    def format_assistant_message_content(
        self, signature: Signature, outputs: Mapping[str, Any], missing_field_message: str | None = None
    ) -> str:
        texts: dict[str, str] = {}
        for name, f in signature.output_fields.items():
            if name in outputs:
                texts[name] = format_output_value(f, outputs[name])
            elif missing_field_message is not None:
                texts[name] = missing_field_message
        return field_blocks(texts) + "\n\n[[ ## completed ## ]]\n"

    def _sections(self, outputs: Mapping[str, SignatureField], text: str, limit: int) -> dict[str, str]:
        sections: dict[str, str] = {}
        matches = [m for m in HEADER_LINE.finditer(text, 0, limit)]
        for i, m in enumerate(matches):
            name = m.group(1)
            if name in outputs and name not in sections:
                end = matches[i + 1].start() if i + 1 < len(matches) else limit
                sections[name] = text[m.end() : end]
        return sections

    def parse(self, signature: SignatureLike, completion: str) -> dict[str, Any]:
        sig = Signature.ensure(signature)
        outputs = sig.output_fields
        sections = self._sections(outputs, completion, len(completion))
        values: dict[str, Any] = {}
        failure: ParseError | None = None
        for name, f in outputs.items():
            if name not in sections:
                continue
            try:
                values[name] = parse_text(f, sections[name])
            except ValueError as exc:
                if failure is None:
                    snippet = sections[name].strip()
                    snippet = snippet if len(snippet) <= 200 else snippet[:200] + "..."
                    failure = ParseError(
                        f"the value {snippet!r} is not a valid {f.type_name}: {describe_error(exc)}",
                        adapter=type(self).__name__,
                        raw=completion,
                        field=name,
                    )
        missing = [name for name in outputs if name not in sections]
        if missing:
            raise ParseError(
                f"missing output field(s) {', '.join(missing)}: each output must start on its own line "
                f"with its marker, e.g. `[[ ## {missing[0]} ## ]]`",
                adapter=type(self).__name__,
                raw=completion,
                field=missing[0],
                parsed=values,
            )
        if failure is not None:
            failure.parsed = values
            raise failure
        return values

    def stream_fields(self, signature: SignatureLike, partial: str) -> list[tuple[str, str]]:
        """Output fields begun in ``partial`` with their raw text so far (stripped). A last line
        that may still become a marker is held back, so each text only grows. Values written as
        JSON string literals (see ``format_output_value``) are shown undecoded."""
        sig = Signature.ensure(signature)
        limit = len(partial)
        line_start = partial.rfind("\n") + 1
        tail = partial[line_start:]
        if tail and HEADER_LINE.match(tail) is None and _may_become_header(tail):
            limit = line_start
        return [(n, t.strip()) for n, t in self._sections(sig.output_fields, partial, limit).items()]
