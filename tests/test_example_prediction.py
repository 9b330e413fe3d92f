"""Example and Prediction: plain, JSON-able data with DSPy's access patterns."""

from __future__ import annotations

import datetime
import json

import pydantic
import pytest

import asynclm
from asynclm.signatures import Example, Prediction


def test_public_names() -> None:
    assert asynclm.Example is Example
    assert asynclm.Prediction is Prediction


def test_item_and_attribute_access() -> None:
    ex = Example(question="Q", answer="A")
    assert ex["question"] == "Q"
    assert ex.answer == "A"
    assert "question" in ex and "missing" not in ex
    assert len(ex) == 2
    assert list(ex) == ["question", "answer"]
    assert dict(ex.items()) == {"question": "Q", "answer": "A"}
    assert ex.get("missing", 7) == 7
    ex.extra = 1
    ex["more"] = 2
    assert ex.extra == 1 and ex["more"] == 2
    del ex.extra
    assert "extra" not in ex
    with pytest.raises(AttributeError, match="Example has no field 'nope'; it has"):
        _ = ex.nope
    with pytest.raises(KeyError):
        _ = ex["nope"]


def test_methods_are_not_shadowed_by_fields() -> None:
    ex = Example(items="a field called items")
    assert ex["items"] == "a field called items"
    assert callable(ex.items)


def test_with_inputs_inputs_labels() -> None:
    ex = Example(question="Q", context="C", answer="A").with_inputs("question", "context")
    assert ex.input_keys == frozenset({"question", "context"})
    assert ex.inputs() == Example(question="Q", context="C")
    assert ex.labels() == Example(answer="A")
    assert ex.inputs().input_keys == ex.input_keys
    # ** unpacking, as DSPy programs do: program(**example.inputs())
    assert (lambda **kw: kw)(**ex.inputs()) == {"question": "Q", "context": "C"}
    with pytest.raises(ValueError, match=r"call example.with_inputs\('question', ...\) first"):
        Example(question="Q").inputs()
    assert Example(a=1).labels() == Example(a=1)


def test_copy_without_and_construction_from_base() -> None:
    ex = Example(question="Q", answer="A").with_inputs("question")
    changed = ex.copy(answer="B")
    assert changed.answer == "B" and ex.answer == "A"
    assert changed.input_keys == ex.input_keys
    assert ex.without("answer") == Example(question="Q")
    assert Example(ex, answer="C") == Example(question="Q", answer="C")
    assert Example(ex).input_keys == ex.input_keys
    assert Example({"a": 1}, b=2) == Example(a=1, b=2)


def test_equality_and_unhashable() -> None:
    assert Example(a=1) == Example(a=1)
    assert Example(a=1) != Example(a=2)
    assert Example(a=1).with_inputs("a") == Example(a=1)  # as in DSPy: fields only
    assert Example(a=1) != {"a": 1}
    with pytest.raises(TypeError):
        hash(Example(a=1))


def test_json_able() -> None:
    class Point(pydantic.BaseModel):
        x: int

    ex = Example(q="Q", when=datetime.date(2024, 1, 2), point=Point(x=1), tags=("a", "b")).with_inputs("q")
    data = ex.to_dict()
    assert data == {"q": "Q", "when": "2024-01-02", "point": {"x": 1}, "tags": ["a", "b"]}
    assert ex.toDict() == data
    saved = json.loads(json.dumps(ex.to_json_dict()))
    assert saved == {"fields": data, "input_keys": ["q"]}
    back = Example.from_json_dict(saved)
    assert back.input_keys == frozenset({"q"})
    assert back["point"] == {"x": 1}


def test_deepcopy() -> None:
    import copy

    ex = Example(a=[1]).with_inputs("a")
    dup = copy.deepcopy(ex)
    assert dup == ex and dup.input_keys == ex.input_keys
    assert dup["a"] is not ex["a"]
    pred = Prediction.from_completions([{"a": 1}, {"a": 2}], usage={"n": 3})
    pdup = copy.deepcopy(pred)
    assert pdup == pred and pdup.completions == pred.completions and pdup.usage == {"n": 3}


def test_repr() -> None:
    assert repr(Example(a=1)) == "Example({'a': 1})"
    assert repr(Example(a=1).with_inputs("a")) == "Example({'a': 1}, input_keys=['a'])"


def test_prediction_fields_completions_and_usage() -> None:
    pred = Prediction(answer="Paris")
    assert pred.answer == "Paris"
    assert pred.completions == [{"answer": "Paris"}]
    assert pred.usage is None
    pred.usage = {"prompt_tokens": 3}
    assert pred.usage == {"prompt_tokens": 3}
    assert "usage" not in pred  # usage is metadata, not a field

    multi = Prediction.from_completions([{"answer": "a"}, {"answer": "b"}], usage={"total_tokens": 9})
    assert multi.answer == "a"
    assert multi.completions == [{"answer": "a"}, {"answer": "b"}]
    assert multi.usage == {"total_tokens": 9}
    copied = multi.copy(answer="z")
    assert copied.completions == multi.completions and copied.usage == multi.usage
    with pytest.raises(ValueError, match="at least one completion"):
        Prediction.from_completions([])


def test_prediction_json_round_trip() -> None:
    multi = Prediction.from_completions([{"answer": "a"}, {"answer": "b"}])
    data = json.loads(json.dumps(multi.to_json_dict()))
    assert data == {"fields": {"answer": "a"}, "input_keys": None, "completions": [{"answer": "a"}, {"answer": "b"}]}
    back = Prediction.from_json_dict(data)
    assert back == multi
    assert back.completions == multi.completions
    single = Prediction(answer="x")
    assert Prediction.from_json_dict(single.to_json_dict()) == single


def test_base_as_a_keyword_copies_its_fields_as_in_dspy() -> None:
    other = Example(a=1, b=2).with_inputs("a")
    ex = Example(base=other, c=3)
    assert dict(ex.items()) == {"a": 1, "b": 2, "c": 3} and ex.input_keys == {"a"}
    assert dict(Example(base={"a": 1}, c=3).items()) == {"a": 1, "c": 3}
    assert Example(base=2, exponent=8)["base"] == 2  # a field that happens to be named base


def test_dspy_bookkeeping_keys_are_hidden_unless_asked_for() -> None:
    ex = Example(question="q", answer="a", dspy_uuid="123", dspy_split="train")
    assert len(ex) == 2
    assert list(ex.keys()) == ["question", "answer"]
    assert list(ex.values()) == ["q", "a"]
    assert dict(ex.items()) == {"question": "q", "answer": "a"}
    assert set(ex.keys(include_dspy=True)) == {"question", "answer", "dspy_uuid", "dspy_split"}
    assert ex.dspy_uuid == "123" and ex["dspy_split"] == "train"  # still reachable by name
