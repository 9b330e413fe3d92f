"""``Adapter``: the sans-I/O contract between signatures and chat messages.

The message layout (system message, demos, history, final user turn) follows DSPy's
``Adapter.format`` so that prompts written for DSPy migrate unchanged; subclasses provide the
field syntax (ChatAdapter's ``[[ ## name ## ]]`` blocks, JSONAdapter's JSON object).
"""

from __future__ import annotations

import enum
import json
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_origin

from asynclm.signatures import Example, History, Signature, SignatureField

from ._errors import ParseError
from ._media import no_media_outputs, raw_message, rendering
from ._values import format_input_value

SignatureLike = str | Signature | type[Signature]
Message = dict[str, Any]

INCOMPLETE_DEMO_PREFIX = "This is an example of the task, though some input or output fields are not supplied."
MISSING_IN_DEMO = "Not supplied for this particular example. "
_PASS_THROUGH_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


def _move_type_to_front(d: Any) -> Any:
    # DSPy's ordering of JSON-schema keys ("type" first, then alphabetical), for LM readability.
    if isinstance(d, Mapping):
        return {k: _move_type_to_front(v) for k, v in sorted(d.items(), key=lambda kv: (kv[0] != "type", kv[0]))}
    if isinstance(d, list):
        return [_move_type_to_front(x) for x in d]
    return d


def field_type_note(f: SignatureField) -> str:
    """``{name}`` plus DSPy's ``# note: the value you produce ...`` for typed output fields."""
    tp = f.annotation
    desc = ""
    if f.kind == "output" and tp is not str:
        if tp is bool:
            desc = "must be True or False"
        elif tp in (int, float):
            desc = f"must be a single {tp.__name__} value"
        elif _is_enum(tp):
            desc = f"must be one of: {'; '.join(str(m.value) for m in tp)}"
        elif get_origin(tp) is Literal:
            desc = f"must exactly match (no extra characters) one of: {'; '.join(str(x) for x in tp.__args__)}"
        else:
            import pydantic

            schema = _move_type_to_front(pydantic.TypeAdapter(tp).json_schema())
            desc = f"must adhere to the JSON schema: {json.dumps(schema, ensure_ascii=False)}"
    note = f"{' ' * 8}# note: the value you produce {desc}" if desc else ""
    return f"{{{f.name}}}{note}"


def _field_descriptions(fields: Mapping[str, SignatureField]) -> str:
    lines = []
    for i, f in enumerate(fields.values()):
        line = f"{i + 1}. `{f.name}` ({f.type_name}): {f.desc or ''}"
        if f.constraints:
            line += f"\nConstraints: {f.constraints_text}"
        lines.append(line)
    return "\n".join(lines).strip()


def _history_messages(value: Any) -> Sequence[Mapping[str, Any]]:
    if value is None:
        return []
    if isinstance(value, History):
        return value.messages
    if isinstance(value, Mapping) and "messages" in value:
        return list(value["messages"])
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise TypeError(f"a History input expects History(messages=[...]), got {type(value).__name__}")


class Adapter(ABC):
    """Turns (signature, demos, inputs) into chat messages and a completion back into outputs.

    Sans-I/O: no method calls an LM, touches the network or needs an event loop. Every method
    that takes a signature also accepts a signature string or a class-form signature.
    Per-signature templates are computed once and cached on the (immutable) signature.
    """

    # -- the public contract --------------------------------------------------------------------

    def format(
        self,
        signature: SignatureLike,
        demos: Sequence[Example | Mapping[str, Any]] | None,
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        """The chat messages for one call: a system message describing the fields and the task,
        each demo as a user/assistant pair (demos missing some fields first, marked as such;
        demos with no inputs or no outputs are skipped), the turns of a ``History`` input, then
        the user turn with ``inputs`` and a reminder of the output format. Input fields absent
        from ``inputs`` are left out."""
        sig = Signature.ensure(signature)

        def build() -> list[Message]:
            nonlocal sig
            # (the system message is made once per signature; that is also when media types in
            # output fields are rejected)
            messages: list[Message] = [{"role": "system", "content": self._system_message(sig)}]
            messages.extend(self.format_demos(sig, demos or ()))
            history_field = self._history_field(sig)
            if history_field is not None:
                sig_wo = sig.memo((type(self), "without-history"), lambda: sig.delete(history_field))
                # DSPy's hook signature, so DSPy adapters' overrides work unchanged (they may delete
                # the history from the inputs they get: a copy)
                messages.extend(self.format_conversation_history(sig_wo, history_field, dict(inputs)))
                sig = sig_wo
            messages.append(
                {"role": "user", "content": self.format_user_message_content(sig, inputs, main_request=True)}
            )
            return messages

        # Media inputs (Image, Audio, File) become content parts; without media the messages
        # are plain strings, exactly as if this step did not exist.
        return rendering(build)

    @abstractmethod
    def parse(self, signature: SignatureLike, completion: str) -> dict[str, Any]:
        """The typed output values in ``completion``; raises ``ParseError``."""

    def format_completion(self, signature: SignatureLike, outputs: Mapping[str, Any]) -> str:
        """The assistant text that ``parse`` reads back to ``outputs`` (every output field
        is required): ``parse(sig, format_completion(sig, v)) == v``."""
        sig = Signature.ensure(signature)
        _check_outputs(sig)
        missing = [name for name in sig.output_fields if name not in outputs]
        if missing:
            raise ValueError(f"format_completion: missing output field(s) {missing} for {sig.signature!r}")
        return self.format_assistant_message_content(sig, outputs)

    def response_format(self, signature: SignatureLike) -> dict[str, Any] | None:
        """The OpenAI ``response_format`` request parameter this adapter wants, or ``None``."""
        return None

    def format_feedback(self, signature: SignatureLike, completion: str, error: ParseError) -> list[Message]:
        """Messages to append (after the ones from ``format``) to re-ask the LM after
        ``error``: the failed answer as an assistant turn, then a user turn saying what was
        wrong and restating the required output format."""
        sig = Signature.ensure(signature)
        where = f" The problem is in the field `{error.field}`." if error.field else ""
        return [
            {"role": "assistant", "content": completion},
            {
                "role": "user",
                "content": f"Your previous response could not be parsed: {error.reason}.{where}\n\n"
                f"{self.user_message_output_requirements(sig)}",
            },
        ]

    def stream_fields(self, signature: SignatureLike, partial: str) -> list[tuple[str, str]]:
        """For a partial completion, the output fields begun so far with their text so far, in
        order; the last one is the field being written. Each text only grows as ``partial`` grows
        (text that may turn out to be markup is held back). Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not support streaming fields")

    # -- DSPy-compatible building blocks (overridable) ------------------------------------------

    def _system_message(self, sig: Signature) -> str:
        return sig.memo((type(self), "system"), lambda: self._checked_system_message(sig))

    def _checked_system_message(self, sig: Signature) -> str:
        _check_outputs(sig)
        return self.format_system_message(sig)

    def format_system_message(self, signature: Signature) -> str:
        return (
            f"{self.format_field_description(signature)}\n"
            f"{self.format_field_structure(signature)}\n"
            f"{self.format_task_description(signature)}"
        )

    def format_field_description(self, signature: Signature) -> str:
        return (
            f"Your input fields are:\n{_field_descriptions(signature.input_fields)}\n"
            f"Your output fields are:\n{_field_descriptions(signature.output_fields)}"
        )

    @abstractmethod
    def format_field_structure(self, signature: Signature) -> str: ...

    def format_task_description(self, signature: Signature) -> str:
        instructions = textwrap.dedent(signature.instructions)
        objective = ("\n" + " " * 8).join(["", *instructions.splitlines()])
        return f"In adhering to this structure, your objective is: {objective}"

    def format_user_message_content(
        self,
        signature: Signature,
        inputs: Mapping[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        parts = [prefix]
        for name, f in signature.input_fields.items():
            if name in inputs:
                parts.append(f"[[ ## {name} ## ]]\n{format_input_value(f, inputs[name])}")
        if main_request:
            parts.append(self._output_requirements(signature))
        parts.append(suffix)
        return "\n\n".join(parts).strip()

    def _output_requirements(self, sig: Signature) -> str:
        return sig.memo((type(self), "requirements"), lambda: self.user_message_output_requirements(sig))

    @abstractmethod
    def user_message_output_requirements(self, signature: Signature) -> str: ...

    @abstractmethod
    def format_assistant_message_content(
        self, signature: Signature, outputs: Mapping[str, Any], missing_field_message: str | None = None
    ) -> str:
        """The assistant turn for ``outputs``. Output fields absent from ``outputs`` are
        rendered as ``missing_field_message`` or, when that is ``None``, left out."""

    def format_demos(self, signature: Signature, demos: Sequence[Example | Mapping[str, Any]]) -> list[Message]:
        complete: list[Any] = []
        incomplete: list[Any] = []
        for demo in demos:
            if all(k in demo and demo[k] is not None for k in signature.fields):
                complete.append(demo)
            elif any(k in demo for k in signature.input_fields) and any(k in demo for k in signature.output_fields):
                incomplete.append(demo)
        messages: list[Message] = []
        for demo in incomplete:
            messages.append(
                {
                    "role": "user",
                    "content": self.format_user_message_content(signature, demo, prefix=INCOMPLETE_DEMO_PREFIX),
                }
            )
            messages.append(
                {
                    "role": "assistant",
                    "content": self.format_assistant_message_content(
                        signature, demo, missing_field_message=MISSING_IN_DEMO
                    ),
                }
            )
        for demo in complete:
            messages.append({"role": "user", "content": self.format_user_message_content(signature, demo)})
            messages.append({"role": "assistant", "content": self.format_assistant_message_content(signature, demo)})
        return messages

    def format_conversation_history(
        self, signature: Signature, history_field_name: str, inputs: Mapping[str, Any]
    ) -> list[Message]:
        """Prior turns of the ``History`` input ``inputs[history_field_name]`` (``signature`` is the
        call's signature without that field; DSPy's hook signature): raw chat messages
        (``role``/``content``) pass through; dicts of field values become a user turn (their
        inputs) and an assistant turn (their outputs)."""
        messages: list[Message] = []
        for turn in _history_messages(inputs.get(history_field_name)):
            if "role" in turn and "content" in turn and _PASS_THROUGH_KEYS.issuperset(turn):
                messages.append(raw_message(turn))
                continue
            messages.append({"role": "user", "content": self.format_user_message_content(signature, turn)})
            outputs = {k: v for k, v in turn.items() if k in signature.output_fields}
            messages.append({"role": "assistant", "content": self.format_assistant_message_content(signature, outputs)})
        return messages

    def _history_field(self, sig: Signature) -> str | None:
        def find() -> str | None:
            for name, f in sig.input_fields.items():
                if f.annotation is History:
                    return name
            return None

        return sig.memo("history-field", find)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_outputs(sig: Signature) -> None:
    """Reject media types in output fields."""
    for name, f in sig.output_fields.items():
        if f.has_media:
            no_media_outputs(name, f)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)
