"""Signatures: string and class forms, types, derivation helpers, value semantics, JSON, errors."""

from __future__ import annotations

import datetime
import enum
import json
import keyword
from typing import Any, Literal, Optional, Union

import pydantic
import pytest
from hypothesis import given, settings, strategies as st

import asynclm
from asynclm.signatures import History, InputField, OutputField, Signature, SignatureError, SignatureField


def test_public_names_resolve_from_the_top_level_package() -> None:
    assert asynclm.Signature is Signature
    assert asynclm.SignatureError is SignatureError
    assert asynclm.InputField is InputField and asynclm.OutputField is OutputField
    assert asynclm.History is History


def test_string_form_fields_types_and_default_instructions() -> None:
    sig = Signature("question, context: list[str] -> answer: int")
    assert list(sig.input_fields) == ["question", "context"]
    assert list(sig.output_fields) == ["answer"]
    assert list(sig.fields) == ["question", "context", "answer"]
    assert sig.input_fields["question"].annotation is str
    assert sig.input_fields["context"].annotation == list[str]
    assert sig.output_fields["answer"].annotation is int
    assert sig.instructions == "Given the fields `question`, `context`, produce the fields `answer`."
    assert not sig.has_custom_instructions
    assert sig.signature == "question, context: list[str] -> answer: int"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("str", str),
        ("int", int),
        ("float", float),
        ("bool", bool),
        ("list[str]", list[str]),
        ("List[int]", list[int]),
        ("dict[str, list[float]]", dict[str, list[float]]),
        ("Optional[int]", Optional[int]),
        ("int | None", Optional[int]),
        ("Union[int, str]", Union[int, str]),
        ("Literal['a', \"b, c\", 1, True, None]", Literal["a", "b, c", 1, True, None]),
        ("Literal[-1]", Literal[-1]),
        ("tuple[int, ...]", tuple[int, ...]),
        ("datetime", datetime.datetime),
        ("date", datetime.date),
        ("Any", Any),
        ("History", History),
        ("typing.List[str]", list[str]),
    ],
)
def test_type_expressions(text: str, expected: Any) -> None:
    sig = Signature(f"q -> a: {text}")
    assert sig.output_fields["a"].annotation == expected
    # The canonical text reads back to the same type.
    again = Signature(f"q -> a: {sig.output_fields['a'].type_str}")
    assert again.output_fields["a"].annotation == expected
    assert again == sig


def test_commas_and_arrows_inside_types_and_quotes_do_not_split() -> None:
    sig = Signature("q: dict[str, int], r: Literal['x -> y', 'a, b'] -> out: tuple[int, str]")
    assert list(sig.input_fields) == ["q", "r"]
    assert sig.input_fields["r"].annotation == Literal["x -> y", "a, b"]


def test_custom_types() -> None:
    class Color(enum.Enum):
        RED = "red"

    class Point(pydantic.BaseModel):
        x: int

    sig = Signature("q -> color: Color, points: list[Point]", custom_types={"Color": Color, "Point": Point})
    assert sig.output_fields["color"].annotation is Color
    assert sig.output_fields["points"].annotation == list[Point]


def test_class_form() -> None:
    class QA(Signature):
        """Answer questions with short factoid answers."""

        question: str = InputField(desc="A question.")
        answer: int = OutputField(desc="The answer.", ge=0)

    sig = Signature.ensure(QA)
    assert sig is Signature.ensure(QA)  # cached
    assert isinstance(sig, QA)
    assert sig.name == "QA"
    assert sig.instructions == "Answer questions with short factoid answers."
    assert sig.output_fields["answer"].constraints == (("ge", 0),)
    assert sig.output_fields["answer"].desc == "The answer."
    # Introspection and derivation work on the class itself.
    assert list(QA.output_fields) == ["answer"]
    assert QA.instructions == sig.instructions
    assert QA.with_instructions("Be brief.").instructions == "Be brief."
    assert QA.to_dict() == sig.to_dict()


def test_class_form_inheritance_untyped_fields_and_forward_refs() -> None:
    class Base(Signature):
        question = InputField()  # no annotation: str

    class Derived(Base):
        """Derived."""

        later: Later = OutputField()  # defined below; resolved on first use

    class Later(pydantic.BaseModel):
        v: int

    sig = Signature.ensure(Derived)
    assert list(sig.fields) == ["question", "later"]
    assert sig.input_fields["question"].annotation is str
    assert sig.output_fields["later"].annotation is Later
    with pytest.raises(SignatureError, match="no output fields"):
        Signature.ensure(Base)


def test_equality_hash_and_name_is_a_label() -> None:
    class QA(Signature):
        question: str = InputField()
        answer: str = OutputField()

    a = Signature("question -> answer")
    assert a == Signature.ensure(QA)
    assert hash(a) == hash(Signature.ensure(QA))
    assert a != Signature("question -> answer: int")
    assert a != Signature("question -> answer", instructions="Other.")
    assert a == Signature("question -> answer", instructions=a.instructions)
    assert len({a, Signature("question -> answer"), Signature.ensure(QA)}) == 1
    assert Signature.ensure("question -> answer") is Signature.ensure("question -> answer")


def test_signatures_are_immutable_values() -> None:
    sig = Signature("a -> b")
    with pytest.raises(TypeError):
        sig.fields["c"] = SignatureField("c", "input")  # type: ignore[index]
    with pytest.raises(AttributeError):
        sig.input_fields["a"].name = "z"  # type: ignore[misc]
    with pytest.raises(AttributeError, match=r"immutable .*derive a new one with with_instructions"):
        sig.instructions = "changed"  # type: ignore[misc]


def test_copies_are_the_same_immutable_object() -> None:
    import copy
    import pickle

    class QA(Signature):
        question: str = InputField()
        answer: int = OutputField()

    for sig in (Signature("a -> b: int"), Signature.ensure(QA)):
        assert copy.copy(sig) is sig
        assert copy.deepcopy(sig) is sig
        assert copy.deepcopy({"sig": sig})["sig"] is sig
        # The pickle protocol (e.g. for process pools) rebuilds an equal signature.
        assert pickle.loads(pickle.dumps(sig)) == sig


def test_derivation_helpers_return_new_signatures() -> None:
    sig = Signature("question -> answer")
    cot = sig.prepend("reasoning", OutputField(desc="Think step by step."))
    assert list(cot.output_fields) == ["reasoning", "answer"]
    assert list(sig.output_fields) == ["answer"]  # unchanged
    assert cot.output_fields["reasoning"].desc == "Think step by step."
    # Default instructions follow the fields.
    assert cot.instructions == "Given the fields `question`, produce the fields `reasoning`, `answer`."

    more = sig.append("context", InputField(), type_=list[str])
    assert list(more.input_fields) == ["question", "context"]
    assert more.input_fields["context"].annotation == list[str]

    mid = Signature("a, c -> z").insert(1, "b", InputField())
    assert list(mid.input_fields) == ["a", "b", "c"]
    assert list(Signature("a -> y, z").insert(-1, "end", OutputField()).output_fields) == ["y", "z", "end"]
    assert list(Signature("a -> y, z").insert(-2, "x", OutputField()).output_fields) == ["y", "x", "z"]
    with pytest.raises(IndexError):
        Signature("a -> z").insert(5, "b", InputField())

    fewer = mid.delete("b")
    assert fewer == Signature("a, c -> z")

    explicit = sig.with_instructions("Be brief.")
    assert explicit.append("extra", OutputField()).instructions == "Be brief."

    updated = sig.with_updated_fields("answer", type_=int, desc="A number.", ge=0)
    assert updated.output_fields["answer"].annotation is int
    assert updated.output_fields["answer"].desc == "A number."
    assert updated.output_fields["answer"].constraints == (("ge", 0),)


def test_to_dict_from_dict_round_trip() -> None:
    sig = Signature(
        "question, history: History -> answer: Optional[int], labels: list[Literal['a', 'b']]",
        instructions="Do it.",
    ).with_updated_fields("answer", desc="The answer.", ge=1)
    data = sig.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-able
    assert data["fields"][2] == {
        "name": "answer",
        "kind": "output",
        "type": "Optional[int]",
        "desc": "The answer.",
        "constraints": {"ge": 1},
    }
    back = Signature.from_dict(json.loads(json.dumps(data)))
    assert back == sig
    assert back.instructions == "Do it."


def test_user_classes_are_flagged_and_need_custom_types() -> None:
    class Point(pydantic.BaseModel):
        x: int

    sig = Signature("q -> p: Point", custom_types={"Point": Point})
    data = sig.to_dict()
    field = data["fields"][1]
    assert field["type"] == "Point"
    assert field["round_trippable"] is False
    assert field["json_schema"]["properties"]["x"]["type"] == "integer"
    with pytest.raises(SignatureError, match="unknown type name 'Point'"):
        Signature.from_dict(data)
    assert Signature.from_dict(data, custom_types={"Point": Point}) == sig


def test_from_dict_rejects_malformed_data() -> None:
    with pytest.raises(SignatureError, match="expected a dict with a 'fields' list"):
        Signature.from_dict({})
    with pytest.raises(SignatureError, match="field entry 0 must have 'name' and 'kind'"):
        Signature.from_dict({"fields": [{"name": "a"}]})


def test_ensure_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="expected a signature"):
        Signature.ensure(42)  # type: ignore[arg-type]


# -- every SignatureError case, with its message ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "question answer",
            "Invalid signature 'question answer': missing '->' between inputs and outputs "
            "(expected e.g. 'question -> answer').",
        ),
        (
            "a -> b -> c",
            "Invalid signature 'a -> b -> c': found 2 '->' separators; a signature has exactly one "
            "(inputs -> outputs).",
        ),
        (
            "question ->",
            "Invalid signature 'question ->': no output fields; a signature needs at least one output after '->' "
            "(for example 'question -> answer').",
        ),
        (
            "draft -> draft",
            "Invalid signature 'draft -> draft': field 'draft' is used both as an input and as an output; "
            "rename one of them (for example 'draft' -> 'revised_draft').",
        ),
        (
            "2nd -> answer",
            "Invalid signature '2nd -> answer': '2nd' is not a valid field name (field names must be Python "
            "identifiers, such as 'question' or 'answer_2').",
        ),
        (
            "class -> answer",
            "Invalid signature 'class -> answer': 'class' is not a valid field name (field names must be Python "
            "identifiers, such as 'question' or 'answer_2').",
        ),
        (
            "my question -> answer",
            "Invalid signature 'my question -> answer': 'my question' is not a valid field name (field names must "
            "be Python identifiers, such as 'question' or 'answer_2').",
        ),
        (
            "q -> answer: list[Foo]",
            "Invalid signature 'q -> answer: list[Foo]': unknown type name 'Foo' in the type 'list[Foo]' of field "
            "'answer'. Known names: Any, Dict, FrozenSet, List, Literal, None, Optional, Set, Tuple, Union, bool, "
            "bytes, date, datetime, dict, float, frozenset, int, list, set, str, time, timedelta, tuple, Audio, File, "
            "History, Image, ToolCalls. "
            "To use your own class, pass custom_types={'Foo': Foo} (or use the class form of Signature).",
        ),
        ("a, a -> b", "Invalid signature 'a, a -> b': field 'a' is declared twice."),
        (
            "a,, b -> c",
            "Invalid signature 'a,, b -> c': empty field name in '' (check for a doubled or trailing comma).",
        ),
        ("a -> b:", "Invalid signature 'a -> b:': field 'b' has ':' but no type after it."),
        (
            "a -> b: list[",
            "Invalid signature 'a -> b: list[': could not parse the type 'list[' of field 'b' (write a Python type "
            "such as 'list[str]' or \"Literal['yes', 'no']\").",
        ),
        (
            "a -> b: Literal[x]",
            "Invalid signature 'a -> b: Literal[x]': Literal[...] accepts only constants, got 'x' in the type "
            "'Literal[x]' of field 'b'.",
        ),
        (
            "a -> b: __import__('os')",
            "Invalid signature \"a -> b: __import__('os')\": unsupported syntax \"__import__('os')\" in the type "
            "\"__import__('os')\" of field 'b'.",
        ),
    ],
)
def test_signature_errors(text: str, message: str) -> None:
    with pytest.raises(SignatureError) as info:
        Signature(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_class_form_errors() -> None:
    with pytest.raises(SignatureError, match=r"field 'question' has a type annotation but no InputField\(\)"):

        class Missing(Signature):
            question: str
            answer: str = OutputField()

    with pytest.raises(SignatureError, match=r"field name 'instructions' clashes with Signature\.instructions"):

        class Clash(Signature):
            instructions: str = InputField()
            answer: str = OutputField()

    class Both(Signature):
        x: str = InputField()
        y: str = OutputField()

    class Child(Both):
        x: int = OutputField()  # a subclass may redeclare a field

    assert list(Signature.ensure(Child).output_fields) == ["y", "x"]
    assert Signature.ensure(Child).output_fields["x"].annotation is int

    with pytest.raises(SignatureError, match="Signature itself has no fields"):
        Signature.ensure(Signature)


def test_field_marker_rejects_unknown_keywords() -> None:
    with pytest.raises(TypeError, match="OutputField\\(\\) got unexpected keyword argument\\(s\\) maximum"):
        OutputField(maximum=3)


def test_signature_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="Signature\\(\\) takes a string"):
        Signature(["a -> b"])  # type: ignore[arg-type]


def test_repr() -> None:
    assert repr(Signature("a -> b: int")) == "Signature('a -> b: int')"
    assert repr(Signature("a -> b", instructions="Hi.")) == "Signature('a -> b', instructions='Hi.')"


# -- property: the string form and to_dict() read back to an equal signature -----------------

_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda n: not keyword.iskeyword(n))
_literal_values = st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.none())
_base_types = st.sampled_from(["str", "int", "float", "bool", "date", "datetime", "Any", "History", "bytes"])


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner.map(lambda t: f"list[{t}]"),
        inner.map(lambda t: f"dict[str, {t}]"),
        inner.map(lambda t: f"Optional[{t}]"),
        inner.map(lambda t: f"{t} | None"),
        inner.map(lambda t: f"tuple[{t}, ...]"),
        st.tuples(inner, inner).map(lambda ab: f"Union[{ab[0]}, {ab[1]}]"),
        st.lists(_literal_values, min_size=1, max_size=4).map(lambda vs: f"Literal[{', '.join(repr(v) for v in vs)}]"),
    )


_types = st.recursive(_base_types, _extend, max_leaves=4)
_fields = st.lists(st.tuples(_names, st.none() | _types), min_size=2, max_size=6, unique_by=lambda f: f[0])


@settings(max_examples=300, deadline=None)
@given(fields=_fields, n_inputs=st.integers(0, 5))
def test_string_form_and_json_round_trip(fields: list[tuple[str, str | None]], n_inputs: int) -> None:
    n_inputs = min(n_inputs, len(fields) - 1)

    def side(fs: list[tuple[str, str | None]]) -> str:
        return ", ".join(name if tp is None else f"{name}: {tp}" for name, tp in fs)

    text = f"{side(fields[:n_inputs])} -> {side(fields[n_inputs:])}"
    sig = Signature(text)
    assert list(sig.fields) == [name for name, _ in fields]
    assert len(sig.input_fields) == n_inputs
    again = Signature(sig.signature)
    assert again == sig and hash(again) == hash(sig)
    for name, f in sig.fields.items():
        assert again.fields[name].annotation == f.annotation
    data = json.loads(json.dumps(sig.to_dict()))
    assert Signature.from_dict(data) == sig


def test_class_fields_keep_declaration_order_with_or_without_annotations() -> None:
    """DSPy keeps the class body's order; an unannotated field used to move to the end."""

    class QA(Signature):
        question: str = InputField()
        context = InputField()
        reasoning = OutputField()
        answer: str = OutputField()

    assert list(QA.input_fields) == ["question", "context"]
    assert list(QA.output_fields) == ["reasoning", "answer"]
    assert QA.signature == "question, context -> reasoning, answer"
