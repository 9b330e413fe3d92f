"""One asynclm program served by FastAPI from a sync ``def`` route and an ``async def`` route.

    pip install fastapi uvicorn
    python examples/fastapi_app.py                                   # embedded model: asynclm[local]
    python examples/fastapi_app.py --model openai/gpt-4o-mini        # uses $OPENAI_API_KEY
    ASYNCLM_MODEL=openai/gpt-4o-mini uvicorn fastapi_app:app --app-dir examples --workers 1

    curl 'http://127.0.0.1:8000/ask?question=Why+is+the+sky+blue%3F'
    curl 'http://127.0.0.1:8000/ask-sync?question=Why+is+the+sky+blue%3F'
    curl -X POST http://127.0.0.1:8000/batch -H 'content-type: application/json' -d '["2+2?", "3+3?"]'

Why both kinds of route work with the same program:

* ``async def`` routes run on uvicorn's event loop: ``await qa(...)`` runs there, as one more task.
  (``qa.sync(...)`` would raise ``SyncInAsyncContextError`` here: blocking the loop's thread would
  freeze every other request.)
* ``def`` routes run in AnyIO worker threads. ``qa.sync(...)`` there recognises the worker thread
  and runs the coroutine back on uvicorn's loop, which started the thread and is free meanwhile.
  So both kinds of route share one loop, one connection pool and the LM's limits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from pydantic import BaseModel

import asynclm as alm


def make_lm(model: str, base_url: str | None) -> alm.LM:
    """``local/...`` is the embedded llama.cpp model; anything else an OpenAI-compatible server."""
    if model.startswith("local/"):
        return alm.LocalLM(model)
    return alm.LM(model, base_url=base_url)


class Answer(BaseModel):
    question: str
    answer: str
    reasoning: str
    tokens: int


# The program: created once at import, shared by every request, route and thread.
qa = alm.ChainOfThought("question -> answer")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Configured from the environment so that `uvicorn fastapi_app:app` works too. configure() may
    # run in any thread or task; there is no "main thread" that must own the settings.
    default = "openai/gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else "local/gemma-3-270m"
    alm.configure(lm=make_lm(os.environ.get("ASYNCLM_MODEL", default), os.environ.get("ASYNCLM_BASE_URL")))
    yield


app = FastAPI(title="asynclm example", lifespan=lifespan)


def to_answer(question: str, pred: alm.Prediction) -> Answer:
    tokens = pred.usage.total_tokens if pred.usage else 0  # usage of every LM call the program made
    return Answer(question=question, answer=pred.answer, reasoning=pred.reasoning, tokens=tokens)


@app.get("/ask")
async def ask(question: str) -> Answer:
    pred = await qa(question=question)  # async route: await, on uvicorn's loop
    return to_answer(question, pred)


@app.get("/ask-sync")
def ask_sync(question: str) -> Answer:
    pred = qa.sync(question=question)  # sync route (worker thread): .sync runs it on uvicorn's loop
    return to_answer(question, pred)


@app.post("/batch")
async def batch(questions: list[str]) -> list[Answer]:
    # Many questions of one request, concurrently on this loop; results in input order.
    preds = await qa.batch([{"question": q} for q in questions], concurrency=8)
    return [to_answer(q, p) for q, p in zip(questions, preds, strict=True)]


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the example app with uvicorn.")
    parser.add_argument("--model", help="default: $ASYNCLM_MODEL, else openai/gpt-4o-mini with a key, else local")
    parser.add_argument("--base-url", help="the server's /v1 URL (default: $ASYNCLM_BASE_URL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    # Hand the choices to the lifespan handler, which also serves `uvicorn fastapi_app:app`.
    if args.model:
        os.environ["ASYNCLM_MODEL"] = args.model
    if args.base_url:
        os.environ["ASYNCLM_BASE_URL"] = args.base_url
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
