"""OpenTelemetry spans: one per module/LM call, nested across tasks, Parallel items and .sync() hops."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import asynclm as alm
from asynclm.testing import ScriptedLM

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture
def spans() -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    callback = alm.modules.OpenTelemetryCallback(provider)
    with alm.context(callbacks=[callback]):
        yield exporter


class Fan(alm.Module):
    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.qa = alm.Predict("question -> answer", lm=lm)

    async def forward(self, n: int) -> alm.Prediction:
        preds = await self.qa.batch([{"question": str(i)} for i in range(n)], concurrency=3)
        blocking = await alm.asyncify(lambda: self.qa.sync(question="from a thread"))()
        return alm.Prediction(answer=",".join(p.answer for p in [*preds, blocking]))


async def test_spans_nest_across_tasks_threads_and_sync(spans: Any) -> None:
    lm = ScriptedLM({"answer": "x"}, usage=(3, 2), latency=0.001)
    await Fan(lm)(n=4)
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    root = [s for s in finished if s.parent is None]
    assert [s.name for s in root] == ["invoke_agent Fan"]
    predicts = [s for s in finished if s.name == "invoke_agent Predict"]
    chats = [s for s in finished if s.name.startswith("chat ")]
    assert len(predicts) == 5 and len(chats) == 5
    for span in predicts:
        assert by_id[span.parent.span_id] is root[0]  # batch items and the asyncify/.sync hop
        assert span.context.trace_id == root[0].context.trace_id
    for chat in chats:
        assert by_id[chat.parent.span_id].name == "invoke_agent Predict"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == "scripted"
    assert root[0].attributes["gen_ai.usage.input_tokens"] == 15


async def test_error_spans_record_the_exception(spans: Any) -> None:
    lm = ScriptedLM(lambda request: (_ for _ in ()).throw(ValueError("kaput")))
    with pytest.raises(ValueError, match="kaput"):
        await alm.Predict("q -> a", lm=lm)(q="x")
    failed = [s for s in spans.get_finished_spans() if s.name == "invoke_agent Predict"]
    assert failed and failed[0].status.status_code.name == "ERROR"
    assert failed[0].attributes["error.type"] == "ValueError"


async def test_concurrent_programs_get_separate_traces(spans: Any) -> None:
    lm = ScriptedLM({"answer": "x"}, latency=0.002)
    qa = alm.Predict("question -> answer", lm=lm)
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(lambda i=i: qa(question=str(i)))
    roots = [s for s in spans.get_finished_spans() if s.parent is None]
    assert len(roots) == 4 and len({s.context.trace_id for s in roots}) == 4
