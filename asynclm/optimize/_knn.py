"""``KNNFewShot``: per call, demos bootstrapped from the training examples nearest to the inputs."""

from __future__ import annotations

import math
import operator
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from asynclm.modules import Module
from asynclm.runtime import ConcurrencyLimiter, asyncify, is_async_callable, sync_twin
from asynclm.signatures import Example

from ._base import Teleprompter, check_trainset
from ._bootstrap import BootstrapFewShot

__all__ = ["KNNFewShot"]


def _text(pairs: Iterable[tuple[str, Any]]) -> str:
    # DSPy's rendering, so that the same embedder ranks the same neighbours
    return " | ".join(f"{key}: {value}" for key, value in pairs)


def _unit(vector: Any, where: str) -> list[float]:
    values = vector.tolist() if hasattr(vector, "tolist") else vector
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        kind = type(vector).__name__
        raise TypeError(f"KNNFewShot: the embedder returned a {kind} for {where}, not a vector") from None
    norm = math.sqrt(math.fsum(v * v for v in floats))
    return [v / norm for v in floats] if norm else floats


class _Neighbours:
    """The training examples' unit vectors and a cosine-similarity search over them."""

    def __init__(self, k: int, trainset: list[Example], embed: Callable[[list[str]], Any]) -> None:
        self.k = k
        self.trainset = trainset
        self._embed = embed
        self._vectors: list[list[float]] | None = None
        # the training set is embedded once, by the first caller; a process-wide limiter (not an
        # anyio.Lock): the compiled program may be called from several threads' loops at once
        self._once = ConcurrencyLimiter(1)

    async def _vectors_of(self, texts: list[str]) -> list[list[float]]:
        vectors = await self._embed(texts)
        vectors = vectors.tolist() if hasattr(vectors, "tolist") else list(vectors)
        if len(vectors) != len(texts):
            raise ValueError(f"KNNFewShot: the embedder returned {len(vectors)} vectors for {len(texts)} texts")
        return [_unit(v, repr(t[:40])) for v, t in zip(vectors, texts, strict=True)]

    async def prepare(self) -> None:
        if self._vectors is not None:
            return
        await self._once.acquire()
        try:
            if self._vectors is None:
                texts = [_text((k, v) for k, v in ex.items() if k in (ex.input_keys or ())) for ex in self.trainset]
                self._vectors = await self._vectors_of(texts)
        finally:
            self._once.release()

    async def nearest(self, inputs: Mapping[str, Any]) -> list[Example]:
        await self.prepare()
        assert self._vectors is not None
        (query,) = await self._vectors_of([_text(inputs.items())])
        if self._vectors and len(query) != len(self._vectors[0]):
            raise ValueError(
                f"KNNFewShot: the query's vector has {len(query)} dimensions, the training set's "
                f"{len(self._vectors[0])}: use one embedder for both"
            )
        scores = [sum(map(operator.mul, v, query)) for v in self._vectors]
        # the highest first; equal scores in training-set order
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self.trainset[i] for i in order[: self.k]]


class KNNFewShot(Teleprompter):
    """Demos chosen per call: the ``k`` training examples most similar to the call's inputs.

    ``compiled = await KNNFewShot(k=3, trainset=train, embedder=asynclm.Embedder(...)).compile(program)``.
    Each call of the compiled program embeds its inputs, finds the ``k`` nearest training examples
    (cosine similarity of the inputs rendered as ``"key: value | ..."``, as DSPy renders them) and
    runs ``BootstrapFewShot(**few_shot_bootstrap_args)`` on them with the original program, then
    answers with the result — DSPy's algorithm. The training set is embedded once, on the first
    call (or when ``compile`` runs). The compiled program keeps the structure of ``program`` and
    saves/loads like it.

    Args:
        k: neighbours per call.
        trainset: the labelled examples (with input keys) to draw demos from.
        embedder: texts -> vectors: an ``asynclm.Embedder``, or any function (sync or async)
            taking a list of strings and returning one vector per string (lists of floats or a
            numpy array). ``vectorizer=`` is DSPy's name for it.
        **few_shot_bootstrap_args: passed to ``BootstrapFewShot`` (``metric``,
            ``max_bootstrapped_demos``, ``max_labeled_demos``, ...).
    """

    def __init__(
        self,
        k: int,
        trainset: Sequence[Example],
        embedder: Any = None,
        *,
        vectorizer: Any = None,
        **few_shot_bootstrap_args: Any,
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"KNNFewShot(k={k!r}): use an int >= 1")
        if embedder is not None and vectorizer is not None:
            raise TypeError("KNNFewShot: pass embedder= (or DSPy's vectorizer=), not both")
        embedder = embedder if embedder is not None else vectorizer
        if embedder is None or not callable(embedder):
            raise TypeError(
                "KNNFewShot needs embedder=: an asynclm.Embedder('openai/<model>') or a function taking a "
                f"list of texts and returning their vectors (got {embedder!r})"
            )
        examples = check_trainset(trainset, "KNNFewShot")
        if not examples:
            raise ValueError("KNNFewShot(trainset=[]): give at least one training example")
        BootstrapFewShot(**few_shot_bootstrap_args)  # its own argument errors, now rather than per call
        self.k = k
        self.trainset = examples
        self.embedder = embedder
        self.few_shot_bootstrap_args = few_shot_bootstrap_args
        embed = embedder if is_async_callable(embedder) else asyncify(embedder)
        self._neighbours = _Neighbours(k, examples, embed)

    @sync_twin
    async def compile(self, student: Module, *, teacher: Module | None = None) -> Module:
        await self._neighbours.prepare()
        compiled = student.reset_copy()
        neighbours = self._neighbours
        bootstrap_args = self.few_shot_bootstrap_args
        original = student.deepcopy()  # later changes to `student` do not change the compiled program

        async def forward(_self: Module, **kwargs: Any) -> Any:
            nearest = await neighbours.nearest(kwargs)
            program = await BootstrapFewShot(**bootstrap_args).compile(original, trainset=nearest, teacher=teacher)
            return await program(**kwargs)

        vars(compiled)["forward"] = types.MethodType(forward, compiled)
        return compiled
