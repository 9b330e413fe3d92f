"""Adapters: golden message layouts (DSPy-compatible), tolerant parsing, ParseError contents,
response_format, feedback messages, History expansion and streaming."""

from __future__ import annotations

import enum
import json
from typing import Literal

import pydantic
import pytest

from asynclm.adapters import Adapter, ChatAdapter, JSONAdapter, ParseError
from asynclm.signatures import Example, History, InputField, OutputField, Signature, SignatureField

COMPLETED_REMINDER = "and then ending with the marker for `[[ ## completed ## ]]`."


class QA(Signature):
    """Answer the question using the context."""

    question: str = InputField(desc="The question.")
    context: list[str] = InputField(desc="Supporting passages.")
    answer: str = OutputField(desc="A short answer.")
    confidence: float = OutputField(desc="Between 0 and 1.", ge=0, le=1)


DEMOS = [
    Example(question="Q1", context=["c1", "c2"], answer="A1", confidence=0.9),
    {"question": "Q0", "answer": "A0"},  # incomplete: rendered first, marked as such
    {"question": "only inputs"},  # no output at all: skipped
]
INPUTS = {"question": "Q2", "context": ["c3"]}

QA_FIELDS = (
    "Your input fields are:\n"
    "1. `question` (str): The question.\n"
    "2. `context` (list[str]): Supporting passages.\n"
    "Your output fields are:\n"
    "1. `answer` (str): A short answer.\n"
    "2. `confidence` (float): Between 0 and 1.\n"
    "Constraints: greater than or equal to: 0, less than or equal to: 1\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
)
QA_OBJECTIVE = "In adhering to this structure, your objective is: \n        Answer the question using the context."


def test_chat_golden_two_inputs_two_outputs_with_demos() -> None:
    messages = ChatAdapter().format(QA, DEMOS, INPUTS)
    assert messages == [
        {
            "role": "system",
            "content": QA_FIELDS + "[[ ## question ## ]]\n{question}\n\n"
            "[[ ## context ## ]]\n{context}\n\n"
            "[[ ## answer ## ]]\n{answer}\n\n"
            "[[ ## confidence ## ]]\n{confidence}        # note: the value you produce must be a single float value\n\n"
            "[[ ## completed ## ]]\n" + QA_OBJECTIVE,
        },
        {
            "role": "user",
            "content": "This is an example of the task, though some input or output fields are not supplied.\n\n"
            "[[ ## question ## ]]\nQ0",
        },
        {
            "role": "assistant",
            "content": "[[ ## answer ## ]]\nA0\n\n[[ ## confidence ## ]]\nNot supplied for this particular example."
            "\n\n[[ ## completed ## ]]\n",
        },
        {"role": "user", "content": '[[ ## question ## ]]\nQ1\n\n[[ ## context ## ]]\n["c1", "c2"]'},
        {
            "role": "assistant",
            "content": "[[ ## answer ## ]]\nA1\n\n[[ ## confidence ## ]]\n0.9\n\n[[ ## completed ## ]]\n",
        },
        {
            "role": "user",
            "content": '[[ ## question ## ]]\nQ2\n\n[[ ## context ## ]]\n["c3"]\n\n'
            "Respond with the corresponding output fields, starting with the field `[[ ## answer ## ]]`, then "
            "`[[ ## confidence ## ]]` (must be formatted as a valid Python float), " + COMPLETED_REMINDER,
        },
    ]


def test_json_golden_two_inputs_two_outputs_with_demos() -> None:
    messages = JSONAdapter().format(QA, DEMOS, INPUTS)
    assert messages == [
        {
            "role": "system",
            "content": QA_FIELDS + "Inputs will have the following structure:\n\n"
            "[[ ## question ## ]]\n{question}\n\n[[ ## context ## ]]\n{context}\n\n"
            "Outputs will be a JSON object with the following fields.\n\n"
            '{\n  "answer": "{answer}",\n'
            '  "confidence": "{confidence}        # note: the value you produce must be a single float value"\n}\n'
            + QA_OBJECTIVE,
        },
        {
            "role": "user",
            "content": "This is an example of the task, though some input or output fields are not supplied.\n\n"
            "[[ ## question ## ]]\nQ0",
        },
        {
            "role": "assistant",
            "content": '{\n  "answer": "A0",\n  "confidence": "Not supplied for this particular example. "\n}',
        },
        {"role": "user", "content": '[[ ## question ## ]]\nQ1\n\n[[ ## context ## ]]\n["c1", "c2"]'},
        {"role": "assistant", "content": '{\n  "answer": "A1",\n  "confidence": 0.9\n}'},
        {
            "role": "user",
            "content": '[[ ## question ## ]]\nQ2\n\n[[ ## context ## ]]\n["c3"]\n\n'
            "Respond with a JSON object in the following order of fields: `answer`, then `confidence` "
            "(must be formatted as a valid Python float).",
        },
    ]


# The next expectations are DSPy 3.x's own golden prompts (tests/adapters in stanfordnlp/dspy),
# reproduced to show that prompts migrate byte for byte.


def test_chat_matches_dspy_simple_golden() -> None:
    sig = Signature.from_fields(
        [
            SignatureField("question", "input", str, desc="The question."),
            SignatureField("answer", "output", str, desc="The answer."),
        ],
        "Answer the question.",
    )
    assert ChatAdapter().format(sig, [], {"question": "What is the capital of France?"}) == [
        {
            "role": "system",
            "content": "Your input fields are:\n1. `question` (str): The question.\nYour output fields are:\n"
            "1. `answer` (str): The answer.\nAll interactions will be structured in the following way, with the "
            "appropriate values filled in.\n\n[[ ## question ## ]]\n{question}\n\n[[ ## answer ## ]]\n{answer}\n\n"
            "[[ ## completed ## ]]\nIn adhering to this structure, your objective is: \n        Answer the question.",
        },
        {
            "role": "user",
            "content": "[[ ## question ## ]]\nWhat is the capital of France?\n\nRespond with the corresponding "
            "output fields, starting with the field `[[ ## answer ## ]]`, " + COMPLETED_REMINDER,
        },
    ]


def test_chat_matches_dspy_typed_outputs_golden() -> None:
    class MultiAnswer(Signature):
        """Answer the question with multiple answers and scores"""

        question: str = InputField(desc="The question.")
        answers: list[str] = OutputField(desc="The answers.")
        scores: list[float] = OutputField(desc="The scores.")

    messages = ChatAdapter().format(
        MultiAnswer, [{"question": "Q1", "answers": ["A1", "A2"], "scores": [0.1, 0.9]}], {"question": "Q2"}
    )
    assert messages[0]["content"] == (
        "Your input fields are:\n1. `question` (str): The question.\nYour output fields are:\n"
        "1. `answers` (list[str]): The answers.\n2. `scores` (list[float]): The scores.\nAll interactions will be "
        "structured in the following way, with the appropriate values filled in.\n\n[[ ## question ## ]]\n"
        "{question}\n\n[[ ## answers ## ]]\n{answers}        # note: the value you produce must adhere to the JSON "
        'schema: {"type": "array", "items": {"type": "string"}}\n\n[[ ## scores ## ]]\n{scores}        # note: the '
        'value you produce must adhere to the JSON schema: {"type": "array", "items": {"type": "number"}}\n\n'
        "[[ ## completed ## ]]\nIn adhering to this structure, your objective is: \n        Answer the question "
        "with multiple answers and scores"
    )
    assert messages[1:] == [
        {"role": "user", "content": "[[ ## question ## ]]\nQ1"},
        {
            "role": "assistant",
            "content": '[[ ## answers ## ]]\n["A1", "A2"]\n\n[[ ## scores ## ]]\n[0.1, 0.9]\n\n[[ ## completed ## ]]\n',
        },
        {
            "role": "user",
            "content": "[[ ## question ## ]]\nQ2\n\nRespond with the corresponding output fields, starting with the "
            "field `[[ ## answers ## ]]` (must be formatted as a valid Python list[str]), then `[[ ## scores ## ]]` "
            "(must be formatted as a valid Python list[float]), " + COMPLETED_REMINDER,
        },
    ]


def test_chat_matches_dspy_nested_model_golden() -> None:
    class Address(pydantic.BaseModel):
        city: str
        country: str

    class Person(pydantic.BaseModel):
        name: str
        address: Address
        tags: list[str]

    class Summary(pydantic.BaseModel):
        headline: str
        score: float

    class Sig(Signature):
        """Given the fields `person`, produce the fields `summary`."""

        person: Person = InputField(desc="The person.")
        summary: Summary = OutputField(desc="The summary.")

    person = Person(name="Ada", address=Address(city="London", country="UK"), tags=["math", "code"])
    assert ChatAdapter().format(Sig, [], {"person": person}) == [
        {
            "role": "system",
            "content": "Your input fields are:\n1. `person` (Person): The person.\nYour output fields are:\n"
            "1. `summary` (Summary): The summary.\nAll interactions will be structured in the following way, with "
            "the appropriate values filled in.\n\n[[ ## person ## ]]\n{person}\n\n[[ ## summary ## ]]\n{summary}"
            '        # note: the value you produce must adhere to the JSON schema: {"type": "object", "properties": '
            '{"headline": {"type": "string", "title": "Headline"}, "score": {"type": "number", "title": "Score"}}, '
            '"required": ["headline", "score"], "title": "Summary"}\n\n[[ ## completed ## ]]\nIn adhering to this '
            "structure, your objective is: \n        Given the fields `person`, produce the fields `summary`.",
        },
        {
            "role": "user",
            "content": '[[ ## person ## ]]\n{"name": "Ada", "address": {"city": "London", "country": "UK"}, '
            '"tags": ["math", "code"]}\n\nRespond with the corresponding output fields, starting with the field '
            "`[[ ## summary ## ]]` (must be formatted as a valid Python Summary), " + COMPLETED_REMINDER,
        },
    ]


def test_chat_history_expands_prior_turns() -> None:
    sig = Signature("history: History, question -> answer")
    history = History(
        messages=[
            {"question": "What is 1+1?", "answer": "2"},
            {"role": "user", "content": "raw turn"},
            {"question": "What is 2+2?", "answer": "4"},
        ]
    )
    messages = ChatAdapter().format(sig, [], {"history": history, "question": "What is 3+3?"})
    assert messages[0]["content"].startswith(
        "Your input fields are:\n1. `history` (History): \n2. `question` (str):\nYour output fields are:\n"
        "1. `answer` (str):\nAll interactions"
    )
    assert messages[1:] == [
        {"role": "user", "content": "[[ ## question ## ]]\nWhat is 1+1?"},
        {"role": "assistant", "content": "[[ ## answer ## ]]\n2\n\n[[ ## completed ## ]]\n"},
        {"role": "user", "content": "raw turn"},
        {"role": "user", "content": "[[ ## question ## ]]\nWhat is 2+2?"},
        {"role": "assistant", "content": "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]\n"},
        {
            "role": "user",
            "content": "[[ ## question ## ]]\nWhat is 3+3?\n\nRespond with the corresponding output fields, "
            "starting with the field `[[ ## answer ## ]]`, " + COMPLETED_REMINDER,
        },
    ]


def test_a_dspy_style_format_conversation_history_override_works() -> None:
    """DSPy's hook is ``(signature, history_field_name, inputs)`` and deletes the history from
    ``inputs``: an adapter ported from DSPy runs unchanged, and the caller's inputs are untouched."""

    class OneLine(ChatAdapter):
        def format_conversation_history(self, signature, history_field_name, inputs):  # type: ignore[no-untyped-def]
            turns = inputs[history_field_name].messages
            del inputs[history_field_name]  # as DSPy's own implementation does
            return [{"role": "user", "content": f"{len(turns)} earlier turns, fields {list(signature.input_fields)}"}]

    inputs = {"history": History(messages=[{"question": "q1", "answer": "a1"}]), "question": "q2"}
    messages = OneLine().format(Signature("history: History, question -> answer"), [], inputs)
    assert messages[1] == {"role": "user", "content": "1 earlier turns, fields ['question']"}
    assert messages[2]["content"].startswith("[[ ## question ## ]]\nq2")
    assert "history" in inputs


def test_list_given_to_str_input_is_a_numbered_list() -> None:
    messages = ChatAdapter().format("context -> answer", [], {"context": ["alpha", "two\nlines"]})
    assert messages[-1]["content"].startswith("[[ ## context ## ]]\n[1] «alpha»\n[2] «««\n    two\n    lines\n»»»")


def test_type_notes_for_bool_enum_literal() -> None:
    class Mood(enum.Enum):
        HAPPY = "happy"
        SAD = "sad"

    sig = Signature("text -> ok: bool, mood: Mood, label: Literal['a', \"it's\"]", custom_types={"Mood": Mood})
    system = ChatAdapter().format(sig, [], {"text": "x"})[0]["content"]
    assert "2. `mood` (Mood): \n3. `label` (Literal['a', \"it's\"]):" in system
    assert "{ok}        # note: the value you produce must be True or False" in system
    assert "{mood}        # note: the value you produce must be one of: happy; sad" in system
    assert "{label}        # note: the value you produce must exactly match (no extra characters) one of: a; it's" in (
        system
    )


def test_missing_inputs_are_left_out_and_extra_keys_ignored() -> None:
    content = ChatAdapter().format(QA, [], {"question": "Q", "unrelated": 1})[-1]["content"]
    assert content.startswith("[[ ## question ## ]]\nQ\n\nRespond with")


# -- parsing -------------------------------------------------------------------------------------


def test_chat_parse_is_tolerant_like_dspy() -> None:
    completion = (
        "Sure! Here you go.\n"
        "[[ ## unknown ## ]]\nignored\n"
        "  [[ ## answer ## ]] Paris\nis the capital\n\n"
        "[[ ## confidence ## ]]\n0.75\n"
        "[[ ## answer ## ]]\nsecond occurrence ignored\n"
    )
    assert ChatAdapter().parse(QA, completion) == {"answer": "Paris\nis the capital", "confidence": 0.75}


def test_chat_parse_accepts_python_and_json_forms() -> None:
    sig = Signature("q -> items: list[str], flag: bool, n: int, maybe: Optional[int]")
    completion = "[[ ## items ## ]]\n['a', 'b']\n[[ ## flag ## ]]\nTrue\n[[ ## n ## ]]\n5\n[[ ## maybe ## ]]\nNone"
    assert ChatAdapter().parse(sig, completion) == {"items": ["a", "b"], "flag": True, "n": 5, "maybe": None}
    fenced = '[[ ## items ## ]]\n```json\n["x"]\n```\n[[ ## flag ## ]]\nfalse\n[[ ## n ## ]]\n"7"\n[[ ## maybe ## ]]\n3'
    assert ChatAdapter().parse(sig, fenced) == {"items": ["x"], "flag": False, "n": 7, "maybe": 3}


def test_enum_accepts_value_or_name() -> None:
    class Mood(enum.Enum):
        HAPPY = "happy"
        SAD = "sad"

    sig = Signature("q -> mood: Mood", custom_types={"Mood": Mood})
    assert ChatAdapter().parse(sig, "[[ ## mood ## ]]\nsad") == {"mood": Mood.SAD}
    assert ChatAdapter().parse(sig, "[[ ## mood ## ]]\nHAPPY") == {"mood": Mood.HAPPY}
    assert JSONAdapter().parse(sig, '{"mood": "Mood.SAD"}') == {"mood": Mood.SAD}


def test_chat_parse_error_for_missing_field() -> None:
    completion = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
    with pytest.raises(ParseError) as info:
        ChatAdapter().parse(QA, completion)
    err = info.value
    assert err.field == "confidence"
    assert err.raw == completion
    assert err.parsed == {"answer": "Paris"}
    assert err.adapter == "ChatAdapter"
    assert "missing output field(s) confidence" in err.reason
    assert str(err).startswith("ChatAdapter could not parse the LM output (field 'confidence'): missing")
    assert isinstance(err, ValueError)


def test_chat_parse_error_for_bad_type_and_constraint() -> None:
    with pytest.raises(ParseError) as info:
        ChatAdapter().parse(QA, "[[ ## answer ## ]]\nParis\n[[ ## confidence ## ]]\nvery sure")
    assert info.value.field == "confidence"
    assert "'very sure' is not a valid float" in info.value.reason
    assert info.value.parsed == {"answer": "Paris"}
    with pytest.raises(ParseError) as info:
        ChatAdapter().parse(QA, "[[ ## answer ## ]]\nParis\n[[ ## confidence ## ]]\n1.5")
    assert info.value.field == "confidence"
    assert "less than or equal to 1" in info.value.reason


def test_json_parse_tolerates_fences_prose_and_broken_json() -> None:
    sig = Signature("q -> answer, n: int")
    adapter = JSONAdapter()
    assert adapter.parse(sig, '{"answer": "a", "n": 1}') == {"answer": "a", "n": 1}
    assert adapter.parse(sig, '```json\n{"answer": "a", "n": 2}\n```') == {"answer": "a", "n": 2}
    assert adapter.parse(sig, 'Here it is: {"answer": "a", "n": 3} Hope that helps!') == {"answer": "a", "n": 3}
    assert adapter.parse(sig, '{"answer": "a", "n": "4",}') == {"answer": "a", "n": 4}
    assert adapter.parse(sig, '{"answer": "cut off", "n": 5') == {"answer": "cut off", "n": 5}
    assert adapter.parse(sig, '{"answer": 42, "n": 6, "extra": true}') == {"answer": "42", "n": 6}


def test_json_parse_errors() -> None:
    sig = Signature("q -> answer, n: int")
    with pytest.raises(ParseError) as info:
        JSONAdapter().parse(sig, "I don't know.")
    assert info.value.field is None
    assert "does not contain a JSON object" in info.value.reason
    with pytest.raises(ParseError) as info:
        JSONAdapter().parse(sig, '{"answer": "a"}')
    assert info.value.field == "n"
    assert info.value.parsed == {"answer": "a"}
    with pytest.raises(ParseError) as info:
        JSONAdapter().parse(sig, '{"answer": "a", "n": "many"}')
    assert info.value.field == "n"
    assert 'the value "many" is not a valid int' in info.value.reason


# -- other contract methods ----------------------------------------------------------------------


def test_response_format() -> None:
    class Item(pydantic.BaseModel):
        name: str
        tags: list[str] = []

    sig = Signature("q -> answer, items: list[Item], n: int", custom_types={"Item": Item})
    rf = JSONAdapter().response_format(sig)
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "outputs"
    assert rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["required"] == ["answer", "items", "n"]
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Item"]["required"] == ["name", "tags"]
    assert schema["$defs"]["Item"]["additionalProperties"] is False
    assert ChatAdapter().response_format(sig) is None
    # Open-ended mappings cannot be strict.
    open_rf = JSONAdapter().response_format("q -> scores: dict[str, int]")
    assert open_rf["json_schema"]["strict"] is False
    # Callers may mutate what they get without corrupting the cache.
    rf["json_schema"]["schema"]["properties"].clear()
    assert JSONAdapter().response_format(sig)["json_schema"]["schema"]["properties"]


def test_response_format_keeps_constraints_and_descriptions() -> None:
    schema = JSONAdapter().response_format(QA)["json_schema"]
    assert schema["name"] == "QA"
    props = schema["schema"]["properties"]
    assert props["confidence"]["minimum"] == 0 and props["confidence"]["maximum"] == 1
    assert props["answer"]["description"] == "A short answer."


@pytest.mark.parametrize("adapter", [ChatAdapter(), JSONAdapter()], ids=lambda a: type(a).__name__)
def test_format_feedback(adapter: Adapter) -> None:
    bad = "[[ ## answer ## ]]\nParis" if isinstance(adapter, ChatAdapter) else '{"answer": "Paris"}'
    with pytest.raises(ParseError) as info:
        adapter.parse(QA, bad)
    feedback = adapter.format_feedback(QA, bad, info.value)
    assert feedback[0] == {"role": "assistant", "content": bad}
    assert feedback[1]["role"] == "user"
    assert feedback[1]["content"].startswith("Your previous response could not be parsed: ")
    assert "The problem is in the field `confidence`." in feedback[1]["content"]
    assert feedback[1]["content"].endswith(adapter.user_message_output_requirements(Signature.ensure(QA)))


def test_format_completion_requires_every_output() -> None:
    with pytest.raises(ValueError, match=r"missing output field\(s\) \['confidence'\]"):
        ChatAdapter().format_completion(QA, {"answer": "x"})


def test_every_signature_form_is_accepted() -> None:
    as_string = "question, context: list[str] -> answer, confidence: float"
    instance = Signature(as_string, instructions=QA.instructions)
    adapter = ChatAdapter()
    by_class = adapter.format(QA, [], INPUTS)
    by_instance = adapter.format(instance, [], INPUTS)
    assert [m["role"] for m in by_class] == [m["role"] for m in by_instance]
    assert by_class[-1] == by_instance[-1]
    text = adapter.format_completion(as_string, {"answer": "a", "confidence": 0.5})
    assert adapter.parse(as_string, text) == adapter.parse(QA, text) == {"answer": "a", "confidence": 0.5}


def test_example_demos_and_string_escape() -> None:
    # A string output that would be misread raw is written as a JSON string literal.
    text = ChatAdapter().format_completion("q -> a, b", {"a": "[[ ## b ## ]]", "b": "  padded  "})
    assert text == '[[ ## a ## ]]\n"[[ ## b ## ]]"\n\n[[ ## b ## ]]\n"  padded  "\n\n[[ ## completed ## ]]\n'
    # Plain strings stay plain, as DSPy writes them.
    assert (
        ChatAdapter().format_completion("q -> a", {"a": "Paris"}) == "[[ ## a ## ]]\nParis\n\n[[ ## completed ## ]]\n"
    )


def test_chat_stream_fields_holds_back_partial_markers() -> None:
    adapter = ChatAdapter()
    assert adapter.stream_fields(QA, "") == []
    assert adapter.stream_fields(QA, "[[ ## ans") == []
    assert adapter.stream_fields(QA, "[[ ## answer ## ]]\nPar") == [("answer", "Par")]
    assert adapter.stream_fields(QA, "[[ ## answer ## ]]\nParis\n\n[[ ## conf") == [("answer", "Paris")]
    assert adapter.stream_fields(QA, "[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.") == [
        ("answer", "Paris"),
        ("confidence", "0."),
    ]
    # A last line that cannot become a marker is released immediately.
    assert adapter.stream_fields(QA, "[[ ## answer ## ]]\nParis\n[[ x") == [("answer", "Paris\n[[ x")]


def test_json_stream_fields() -> None:
    adapter = JSONAdapter()
    assert adapter.stream_fields(QA, '```json\n{"answer": "Pa') == [("answer", "Pa")]
    assert adapter.stream_fields(QA, '{"answer": "line\\') == [("answer", "line")]
    assert adapter.stream_fields(QA, '{"answer": "line\\nnext", "confidence": 0.9') == [
        ("answer", "line\nnext"),
        ("confidence", "0.9"),
    ]
    assert adapter.stream_fields(QA, '{"other": "x", "answer": "y"}') == [("answer", "y")]


def test_adapters_do_no_io_and_are_reusable_across_threads() -> None:
    import threading

    adapter = ChatAdapter()
    results: list[object] = []

    def work() -> None:
        for _ in range(50):
            text = adapter.format_completion(QA, {"answer": "a", "confidence": 0.5})
            results.append(adapter.parse(QA, text))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"answer": "a", "confidence": 0.5}] * 200


def test_literal_field_parses_quoted_choice() -> None:
    sig = Signature("q -> label: Literal['yes', 'no']")
    assert ChatAdapter().parse(sig, "[[ ## label ## ]]\n'yes'") == {"label": "yes"}
    assert ChatAdapter().parse(sig, '[[ ## label ## ]]\n"no"') == {"label": "no"}
    with pytest.raises(ParseError):
        ChatAdapter().parse(sig, "[[ ## label ## ]]\nmaybe")
    assert json.loads(JSONAdapter().format_completion(sig, {"label": "no"})) == {"label": "no"}


def test_literal_annotation_type_is_shown_like_dspy() -> None:
    lit = Literal["one", "two", 'three"']
    sig = Signature.from_fields(
        [
            SignatureField("input_text", "input", lit),
            SignatureField("output_text", "output", Literal["she's here", "okay"]),
        ]
    )
    system = ChatAdapter().format(sig, [], {"input_text": "two"})[0]["content"]
    assert "Literal['one', 'two', 'three\"']" in system
    assert "Literal[\"she's here\", 'okay']" in system


def test_layering_signatures_and_adapters_import_no_io_layers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asynclm.adapters, asynclm.signatures\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('asynclm.lm', 'asynclm.modules', 'asynclm.runtime',"
        " 'anyio', 'httpx', 'aiohttp', 'trio', 'json_repair')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
