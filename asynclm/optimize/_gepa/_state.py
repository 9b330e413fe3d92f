"""GEPA's bookkeeping, without I/O: the candidate pool with its per-example Pareto front, how a
parent is drawn from it, the training minibatches, the budget presets and how two candidates
are merged. The engine (``_optimizer``) drives these; every random draw comes from one seeded
``random.Random``, made in a fixed order, so a run depends on the seed and the data only."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "AUTO_CANDIDATES",
    "MinibatchSampler",
    "Pool",
    "auto_budget",
    "dominators",
    "merge_subsample",
    "pick_merge",
    "select_parent",
]

# DSPy's presets: the number of candidates its budget formula assumes.
AUTO_CANDIDATES = {"light": 6, "medium": 12, "heavy": 18}


def auto_budget(num_predictors: int, num_candidates: int, valset_size: int) -> int:
    """The metric-call budget of an ``auto`` preset, computed with DSPy's formula (which it shares
    with MIPROv2's trial count: a minibatch of 35, a full evaluation every 5 trials)."""
    minibatch, every = 35, 5
    trials = int(max(2 * (num_predictors * 2) * math.log2(num_candidates), 1.5 * num_candidates))
    total = valset_size + num_candidates * 5 + trials * minibatch
    if trials == 0:
        return total
    full_evals = (trials + 1) // every + 1 + (1 if trials < every else 0)
    return total + full_evals * valset_size


@dataclasses.dataclass
class Pool:
    """Every accepted candidate (its instruction per predictor), its validation scores and the
    Pareto front: for each validation example, the best score seen and the candidates that
    reach it."""

    names: list[str]  # the predictors, in named_predictors() order
    candidates: list[dict[str, str]] = dataclasses.field(default_factory=list)
    parents: list[list[int | None]] = dataclasses.field(default_factory=list)
    val_scores: list[list[float]] = dataclasses.field(default_factory=list)
    aggregate: list[float] = dataclasses.field(default_factory=list)
    front_scores: list[float] = dataclasses.field(default_factory=list)
    front: list[set[int]] = dataclasses.field(default_factory=list)
    discovered_at: list[int] = dataclasses.field(default_factory=list)  # metric calls spent before its evaluation
    origin: list[str] = dataclasses.field(default_factory=list)  # "seed", "reflection" or "merge"
    round_found: list[int] = dataclasses.field(default_factory=list)
    next_component: list[int] = dataclasses.field(default_factory=list)  # round-robin position per candidate

    def add(
        self,
        candidate: dict[str, str],
        parents: list[int | None],
        scores: list[float],
        *,
        discovered_at: int,
        origin: str,
        round_found: int,
    ) -> int:
        index = len(self.candidates)
        self.candidates.append(dict(candidate))
        self.parents.append(list(parents))
        self.val_scores.append(list(scores))
        self.aggregate.append(sum(scores) / len(scores))
        self.discovered_at.append(discovered_at)
        self.origin.append(origin)
        self.round_found.append(round_found)
        known = [p for p in parents if p is not None]
        self.next_component.append(max((self.next_component[p] for p in known), default=0))
        if index == 0:
            self.front_scores = list(scores)
            self.front = [{0} for _ in scores]
            return index
        for i, score in enumerate(scores):
            if score > self.front_scores[i]:
                self.front_scores[i] = score
                self.front[i] = {index}
            elif score == self.front_scores[i]:
                self.front[i].add(index)
        return index

    @property
    def best(self) -> int:
        """The candidate with the highest mean validation score (the first one on a tie)."""
        return self.aggregate.index(max(self.aggregate))

    def ancestors(self, index: int) -> set[int]:
        found: set[int] = set()
        todo = [p for p in self.parents[index] if p is not None]
        while todo:
            p = todo.pop()
            if p not in found:
                found.add(p)
                todo.extend(q for q in self.parents[p] if q is not None)
        return found


def _dominated(program: int, others: set[int], front: list[set[int]]) -> bool:
    """Whether every front ``program`` is on also holds one of ``others``."""
    return all(any(o in others for o in cell) for cell in front if program in cell)


def _prune(front: list[set[int]], aggregate: Sequence[float]) -> list[set[int]]:
    """The front without its dominated candidates, weakest (by mean score) removed first, one at
    a time, as GEPA does."""
    seen: dict[int, int] = {}
    for cell in front:
        for p in cell:
            seen[p] = seen.get(p, 0) + 1
    programs = sorted(seen, key=lambda p: aggregate[p])
    removed: set[int] = set()
    changed = True
    while changed:
        changed = False
        for p in programs:
            if p in removed:
                continue
            if _dominated(p, set(programs) - {p} - removed, front):
                removed.add(p)
                changed = True
                break
    return [{p for p in cell if p not in removed} for cell in front]


def dominators(pool: Pool) -> list[int]:
    """The candidates left on the front once dominated ones are removed."""
    found: set[int] = set()
    for cell in _prune(pool.front, pool.aggregate):
        found |= cell
    return list(found)


def select_parent(pool: Pool, strategy: str, rng: random.Random) -> int:
    """The parent of the next mutation. ``"pareto"``: a candidate of the pruned front, drawn with
    probability proportional to the number of validation examples it is best on (GEPA's rule);
    ``"current_best"``: the best mean score."""
    if strategy == "current_best":
        return pool.best
    counts: dict[int, int] = {}
    for cell in _prune(pool.front, pool.aggregate):
        for p in cell:
            counts[p] = counts.get(p, 0) + 1
    draw = [p for p, n in counts.items() for _ in range(n)]
    return rng.choice(draw)


class MinibatchSampler:
    """The training minibatches: the training set shuffled once per epoch and cut into slices of
    ``size``, padded with the least used examples when the size does not divide it (GEPA's
    epoch-shuffled sampler). Iteration ``i`` gets slice ``i``, so a round of k proposals takes k
    consecutive slices."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.order: list[int] = []
        self.epoch = -1

    def _reshuffle(self, n: int) -> None:
        self.order = list(range(n))
        self.rng.shuffle(self.order)
        uses = Counter(self.order)
        short = (-n) % self.size
        for _ in range(short):
            least = uses.most_common()[::-1][0][0]
            self.order.append(least)
            uses[least] += 1

    def ids(self, n: int, iteration: int) -> list[int]:
        start = iteration * self.size
        epoch = 0 if self.epoch == -1 else start // max(len(self.order), 1)
        if not self.order or epoch > self.epoch:
            self.epoch = epoch
            self._reshuffle(n)
        start %= len(self.order)
        return self.order[start : start + self.size]


def _carries_change(pool: Pool, ancestor: int, a: int, b: int) -> bool:
    """Whether some predictor kept the ancestor's text in one of ``a``, ``b`` but not the other
    (so merging can take the change from the other)."""
    for name in pool.names:
        old, x, y = pool.candidates[ancestor][name], pool.candidates[a][name], pool.candidates[b][name]
        if (old == x or old == y) and x != y:
            return True
    return False


@dataclasses.dataclass
class MergeBook:
    """What has been merged already (GEPA never merges the same triplet, or makes the same child
    twice), and the merge schedule: ``due`` merges owed, ``tested`` accepted so far."""

    triplets: set[tuple[int, int, int]] = dataclasses.field(default_factory=set)
    made: set[tuple[int, int, tuple[int, ...]]] = dataclasses.field(default_factory=set)
    due: int = 0
    tested: int = 0
    found_new_last_round: bool = False


def _pair(pool: Pool, rng: random.Random, candidates: list[int], book: MergeBook) -> tuple[int, int, int] | None:
    for _ in range(10):
        if len(candidates) < 2:
            return None
        a, b = rng.sample(candidates, 2)
        if a == b:
            continue
        a, b = min(a, b), max(a, b)
        up_a, up_b = pool.ancestors(a), pool.ancestors(b)
        if b in up_a or a in up_b:
            continue
        common = [
            c
            for c in sorted(up_a & up_b)
            if (a, b, c) not in book.triplets
            and pool.aggregate[c] <= pool.aggregate[a]
            and pool.aggregate[c] <= pool.aggregate[b]
            and _carries_change(pool, c, a, b)
        ]
        if common:
            weights = [pool.aggregate[c] for c in common]
            if sum(weights) > 0:
                return a, b, rng.choices(common, k=1, weights=weights)[0]
            return a, b, rng.choices(common, k=1)[0]
    return None


def pick_merge(pool: Pool, rng: random.Random, book: MergeBook) -> tuple[dict[str, str], int, int, int] | None:
    """A merge of two front candidates that share an ancestor both improve on: each predictor
    takes the text that changed from the ancestor (the better parent's when both changed).
    Returns ``(child, a, b, ancestor)`` or ``None`` when no pair qualifies."""
    merge_candidates = dominators(pool)
    if len(merge_candidates) < 2 or len(pool.candidates) < 3:
        return None
    for _ in range(10):
        found = _pair(pool, rng, merge_candidates, book)
        if found is None:
            continue
        a, b, ancestor = found
        child = dict(pool.candidates[ancestor])
        taken: list[int] = []
        for name in pool.names:
            old, x, y = pool.candidates[ancestor][name], pool.candidates[a][name], pool.candidates[b][name]
            if (old == x or old == y) and x != y:
                source = b if old == x else a
            elif old != x and old != y:
                if pool.aggregate[a] != pool.aggregate[b]:
                    source = a if pool.aggregate[a] > pool.aggregate[b] else b
                else:
                    source = rng.choice([a, b])
            else:
                source = a
            child[name] = pool.candidates[source][name]
            taken.append(source)
        key = (a, b, tuple(taken))
        if key in book.made:
            continue
        book.made.add(key)
        book.triplets.add((a, b, ancestor))
        return child, a, b, ancestor
    return None


def merge_subsample(scores_a: list[float], scores_b: list[float], rng: random.Random, size: int = 5) -> list[int]:
    """The validation examples a merged child is first tried on: as evenly as possible those where
    parent a is better, where b is better, and where they tie (GEPA's choice)."""
    everything = range(len(scores_a))
    a_wins = [i for i in everything if scores_a[i] > scores_b[i]]
    b_wins = [i for i in everything if scores_b[i] > scores_a[i]]
    ties = [i for i in everything if i not in a_wins and i not in b_wins]
    each = math.ceil(size / 3)
    n_a = min(len(a_wins), each)
    n_b = min(len(b_wins), each)
    n_t = min(len(ties), size - (n_a + n_b))
    chosen: list[int] = []
    if n_a:
        chosen += rng.sample(a_wins, k=n_a)
    if n_b:
        chosen += rng.sample(b_wins, k=n_b)
    if n_t:
        chosen += rng.sample(ties, k=n_t)
    missing = size - len(chosen)
    if missing > 0:
        unused = sorted(set(everything) - set(chosen))
        if len(unused) >= missing:
            chosen += rng.sample(unused, k=missing)
        else:
            chosen += rng.choices(list(everything), k=missing)
    return chosen[:size]
