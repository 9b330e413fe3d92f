"""``Embedder``: OpenAI-compatible /v1/embeddings over real HTTP (FakeOpenAIServer), with the LM
client's batching, cache, retries, deadline, usage and cost; and function embedders. Both backends."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import asynclm
from asynclm.lm import BadRequestError, Embedder, LMTimeoutError, track_usage
from asynclm.testing import FakeOpenAIServer, Fault, Fields, fake_embedding

KEY = "sk-test-embedder"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


def make(server: FakeOpenAIServer, **kw: Any) -> Embedder:
    kw.setdefault("cache", False)
    embedder = Embedder("openai/text-embedding-3-small", base_url=server.base_url, api_key=KEY, **kw)
    assert embedder._lm is not None
    embedder._lm.backoff_base = 0.001
    return embedder


async def test_vectors_in_order_and_the_wire_format(server: FakeOpenAIServer) -> None:
    embedder = make(server, dimensions=16)
    vectors = await embedder(["the cat sat", "a dog ran", "the cat"])
    assert vectors == [fake_embedding(t, 16) for t in ["the cat sat", "a dog ran", "the cat"]]
    request = server.last_request
    assert request.path == "/v1/embeddings"
    assert request.json == {"model": "text-embedding-3-small", "input": ["the cat sat", "a dog ran", "the cat"],
                            "dimensions": 16}  # fmt: skip
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert await embedder("one text") == fake_embedding("one text", 16)  # one string: one vector


async def test_batches_go_out_concurrently_and_keep_the_input_order(server: FakeOpenAIServer) -> None:
    server.latency = 0.2
    texts = [f"text number {i}" for i in range(7)]
    vectors = await make(server, batch_size=3)(texts)
    assert vectors == [fake_embedding(t) for t in texts]
    assert sorted(len(r.json["input"]) for r in server.request_log) == [1, 3, 3]
    assert server.max_in_flight == 3
    await make(server)(texts, batch_size=7)  # per call
    assert len(server.last_request.json["input"]) == 7


async def test_the_cache_answers_repeats_and_refresh_asks_again(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with asynclm.context(cache_dir=str(tmp_path)):
        embedder = make(server, cache=True)
        first = await embedder(["alpha", "beta"])
        again = await embedder(["alpha", "beta"])
        assert first == again and server.requests == 1
        await embedder(["alpha", "beta"], cache="refresh")
        assert server.requests == 2
        await embedder(["alpha", "beta"], cache=False)
        assert server.requests == 3
        # another endpoint never shares the entry
        with FakeOpenAIServer() as other:
            await Embedder("openai/text-embedding-3-small", base_url=other.base_url, api_key=KEY)(["alpha", "beta"])
            assert other.requests == 1


async def test_retries_deadline_and_errors(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.server_error(503))
    assert await make(server)(["retried"]) == [fake_embedding("retried")]
    assert server.requests == 2
    server.fail_next(Fault.error(400, message="bad model"))
    with pytest.raises(BadRequestError, match="bad model"):
        await make(server)(["x"])
    server.fail_next(Fault.hang())
    with pytest.raises(LMTimeoutError, match=r"timeout of 0\.5 s"):
        await make(server, timeout=0.5)(["hangs"])
    await server.wait_until(lambda s: s.client_disconnects == 1)


async def test_usage_budgets_and_cost(server: FakeOpenAIServer) -> None:
    embedder = make(server, price={"input": 0.02, "output": 0.0})
    with track_usage() as usage, asynclm.usage_limits(max_requests=2) as limits:
        await embedder(["twelve chars", "sixteen chars!!!"])
        await embedder(["x" * 40])
        with pytest.raises(asynclm.UsageLimitExceeded):
            await embedder(["one request too many"])
    assert usage.prompt_tokens == 3 + 4 + 10 and usage.completion_tokens == 0
    assert usage.cost == pytest.approx(17 * 0.02 / 1e6)
    assert limits.requests == 2


def test_sync_from_plain_threads(server: FakeOpenAIServer) -> None:
    embedder = make(server)
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        results[i] = embedder.sync([f"thread {i}"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [fake_embedding(f"thread {i}")] for i in range(4)}


async def test_a_function_as_the_embedder() -> None:
    seen: list[list[str]] = []

    def sync_fn(texts: list[str]) -> list[list[float]]:
        seen.append(texts)
        return [[float(len(t)), 1.0] for t in texts]

    async def async_fn(texts: list[str]) -> list[list[float]]:
        return sync_fn(texts)

    for fn in (sync_fn, async_fn):
        seen.clear()
        embedder = Embedder(fn, batch_size=2)
        assert await embedder(["a", "bb", "ccc"]) == [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
        assert sorted(seen) == [["a", "bb"], ["ccc"]]
    with pytest.raises(ValueError, match="returned 1 vectors for 2 texts"):
        await Embedder(lambda texts: [[0.0]])(["a", "b"])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Embedder("openai/m", batch_size=0)
    with pytest.raises(ValueError, match="OpenAI-compatible endpoints only"):
        Embedder("anthropic/claude-x", api_key="k")
    with pytest.raises(ValueError, match="cache"):
        Embedder("openai/m", cache="sometimes")
    with pytest.raises(TypeError, match="a string or a list of strings"):
        Embedder(lambda t: t).sync([1, 2])  # type: ignore[list-item]


async def test_knn_fewshot_with_an_embedder_over_http(server: FakeOpenAIServer) -> None:
    """KNNFewShot picks each call's nearest training examples with a real Embedder."""
    server.set_responses(Fields(answer="ok"))
    train = [
        asynclm.Example(question=q, answer="a").with_inputs("question")
        for q in ["capital of France", "capital of Spain", "color of the sky", "color of grass"]
    ]
    lm = asynclm.LM("openai/m", base_url=server.base_url, api_key=KEY, cache=False)
    knn = asynclm.KNNFewShot(k=2, trainset=train, embedder=make(server), max_bootstrapped_demos=0,
                             max_labeled_demos=2)  # fmt: skip
    compiled = await knn.compile(asynclm.Predict("question -> answer", lm=lm))
    await compiled(question="what is the color of the sea")
    chat = [r for r in server.request_log if r.path.endswith("/chat/completions")][-1]
    demos = " ".join(m["content"] for m in chat.messages[1:-1] if m["role"] == "user")
    assert "color of the sky" in demos and "color of grass" in demos and "capital" not in demos
