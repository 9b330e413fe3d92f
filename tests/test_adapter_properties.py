"""Property tests: for every supported field type and both adapters,
``parse(format_completion(v)) == v``, including adversarial strings; and streamed field text
only grows and ends at the parsed value's text."""

from __future__ import annotations

import datetime
import enum
import math
from typing import Any, Literal, Optional, Union

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from asynclm.adapters import Adapter, ChatAdapter, JSONAdapter
from asynclm.signatures import Signature, SignatureField


class Color(str, enum.Enum):
    RED = "red"
    GREEN = "green light"
    TRICKY = "None"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Address(pydantic.BaseModel):
    city: str
    zip: int | None = None
    tags: list[str] = []


ADVERSARIAL = [
    "",
    " ",
    "  leading and trailing  ",
    "\n",
    "[[ ## value ## ]]",
    "[[ ## completed ## ]]",
    "text\n[[ ## other ## ]]\nmore",
    "  [[ ## value ## ]] indented marker",
    "inline [[ ## value ## ]] marker",
    '"quoted"',
    '"',
    '""',
    "'single'",
    "{",
    "}",
    '{"value": 1}',
    "[1, 2]",
    '```json\n{"a": 1}\n```',
    "```",
    "null",
    "None",
    "True",
    "false",
    "5",
    "-0.0",
    "inf",
    "line\r\nwindows",
    "\r",
    "unicode: é ü 中文 😀 \u2028 \u2029 \x85",
    "tab\tseparated",
    "\\",
    "\\n not a newline",
    "«guillemets»",
]

adversarial_text = st.one_of(
    st.sampled_from(ADVERSARIAL),
    st.text(),
    st.lists(st.sampled_from([*ADVERSARIAL, "a", "\n", " "]), max_size=6).map("".join),
)
finite_or_inf = st.floats(allow_nan=False)

# (annotation, strategy of values of that type)
CASES: list[tuple[str, Any, st.SearchStrategy[Any]]] = [
    ("str", str, adversarial_text),
    ("int", int, st.integers()),
    ("float", float, finite_or_inf),
    ("bool", bool, st.booleans()),
    (
        "literal",
        Literal["a", "b c", "it's", "5", "None", "[[ ## x ## ]]"],
        st.sampled_from(["a", "b c", "it's", "5", "None", "[[ ## x ## ]]"]),
    ),
    ("str-enum", Color, st.sampled_from(list(Color))),
    ("int-enum", Level, st.sampled_from(list(Level))),
    ("list[str]", list[str], st.lists(adversarial_text, max_size=4)),
    ("list[int]", list[int], st.lists(st.integers(), max_size=5)),
    ("dict[str, int]", dict[str, int], st.dictionaries(adversarial_text, st.integers(), max_size=4)),
    (
        "dict[str, list[float]]",
        dict[str, list[float]],
        st.dictionaries(st.text(max_size=5), st.lists(finite_or_inf, max_size=3), max_size=3),
    ),
    ("Optional[int]", Optional[int], st.none() | st.integers()),
    ("Optional[str]", Optional[str], st.none() | adversarial_text),
    ("int | str", Union[int, str], st.integers() | adversarial_text),
    ("tuple[int, str]", tuple[int, str], st.tuples(st.integers(), adversarial_text)),
    (
        "model",
        Address,
        st.builds(
            Address,
            city=adversarial_text,
            zip=st.none() | st.integers(),
            tags=st.lists(adversarial_text, max_size=3),
        ),
    ),
    ("list[model]", list[Address], st.lists(st.builds(Address, city=st.text(max_size=5)), max_size=3)),
    ("datetime", datetime.datetime, st.datetimes()),
    ("aware datetime", datetime.datetime, st.datetimes(timezones=st.just(datetime.timezone.utc))),
    ("date", datetime.date, st.dates()),
    (
        "Any",
        Any,
        st.none() | st.booleans() | st.integers() | adversarial_text | st.lists(st.integers(), max_size=3),
    ),
]

ADAPTERS = [ChatAdapter(), JSONAdapter()]


def _signature(annotation: Any) -> Signature:
    return Signature.from_fields(
        [
            SignatureField("question", "input"),
            SignatureField("value", "output", annotation),
            SignatureField("other", "output"),
        ]
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a == 0.0:
        return b == 0.0 and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize(("label", "annotation", "values"), CASES, ids=[c[0] for c in CASES])
def test_parse_reads_back_format_completion(
    adapter: Adapter, label: str, annotation: Any, values: st.SearchStrategy[Any]
) -> None:
    sig = _signature(annotation)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(value=values, other=adversarial_text)
    def check(value: Any, other: str) -> None:
        text = adapter.format_completion(sig, {"value": value, "other": other})
        parsed = adapter.parse(sig, text)
        assert list(parsed) == ["value", "other"]
        assert _same(parsed["value"], value), (text, parsed)
        assert parsed["other"] == other, (text, parsed)

    check()


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: type(a).__name__)
@settings(max_examples=200, deadline=None)
@given(value=adversarial_text, other=adversarial_text)
def test_streamed_field_text_only_grows(adapter: Adapter, value: str, other: str) -> None:
    sig = _signature(str)
    text = adapter.format_completion(sig, {"value": value, "other": other})
    seen: dict[str, str] = {}
    order: list[str] = []
    for i in range(len(text) + 1):
        fields = adapter.stream_fields(sig, text[:i])
        names = [name for name, _ in fields]
        assert names[: len(order)] == order, "a field disappeared or changed position"
        order = names
        for name, partial in fields:
            assert partial.startswith(seen.get(name, "")), (name, seen.get(name), partial, text[:i])
            seen[name] = partial
    assert order == ["value", "other"]
    if isinstance(adapter, JSONAdapter):
        assert seen == {"value": value, "other": other}


_FUZZ_SIG = Signature("question -> answer, n: int, items: list[str], flag: Optional[bool]")
_fuzz_pieces = st.sampled_from(
    [
        "[[ ## answer ## ]]",
        "[[ ## n ## ]]",
        "[[ ## items ## ]]",
        "[[ ## flag ## ]]",
        "[[ ## completed ## ]]",
        "\n",
        " ",
        "{",
        "}",
        "[",
        "]",
        '"',
        "'",
        ",",
        ":",
        '"answer"',
        '"n"',
        "1",
        "-",
        "1e999",
        "None",
        "true",
        "```json",
        "```",
        "\\",
        "\\u12",
        "((((",
    ]
)
_fuzz_text = st.one_of(st.text(), st.lists(st.one_of(_fuzz_pieces, st.text(max_size=3)), max_size=30).map("".join))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: type(a).__name__)
@settings(max_examples=400, deadline=None)
@given(text=_fuzz_text)
def test_arbitrary_text_parses_or_raises_parse_error(adapter: Adapter, text: str) -> None:
    from asynclm.adapters import ParseError

    try:
        out = adapter.parse(_FUZZ_SIG, text)
    except ParseError as err:
        assert err.raw == text
        assert err.reason
    else:
        assert list(out) == ["answer", "n", "items", "flag"]
        assert isinstance(out["n"], int) and isinstance(out["items"], list)
    # Streaming never fails on arbitrary text either.
    for name, partial in adapter.stream_fields(_FUZZ_SIG, text):
        assert name in _FUZZ_SIG.output_fields and isinstance(partial, str)
