"""The DSPy side of the GEPA benchmark (runs in ``bench/.venv-dspy``; imports no asynclm).

bench/.venv-dspy/bin/python bench/gepa_dspy.py URL MAX_METRIC_CALLS NUM_THREADS
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dspy  # type: ignore[import-not-found]
from _gepa_task import TRAIN_WORDS, VAL_WORDS, feedback_of, result_summary, score_of


class Pipeline(dspy.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> draft")
        self.second = dspy.Predict("draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.second(draft=self.first(question=question).draft)


def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):  # type: ignore[no-untyped-def]
    score = score_of(gold.question, str(pred.answer))
    if pred_name is None:
        return score
    return dspy.Prediction(score=score, feedback=feedback_of(gold.question, str(pred.answer), pred_name))


def main() -> None:
    url, budget, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    task = dspy.LM("openai/task", api_base=url, api_key="k", cache=False, num_retries=0)
    reflect = dspy.LM("openai/reflect", api_base=url, api_key="k", cache=False, num_retries=0)
    dspy.configure(lm=task)
    train = [dspy.Example(question=w).with_inputs("question") for w in TRAIN_WORDS]
    val = [dspy.Example(question=w).with_inputs("question") for w in VAL_WORDS]
    gepa = dspy.GEPA(
        metric=metric, reflection_lm=reflect, max_metric_calls=budget, num_threads=threads, seed=0, track_stats=True
    )
    t0 = time.perf_counter()
    best = gepa.compile(Pipeline(), trainset=train, valset=val)
    wall = time.perf_counter() - t0
    r = best.detailed_results
    print(
        json.dumps(
            result_summary(
                list(r.val_aggregate_scores),
                r.total_metric_calls,
                len(r.candidates),
                wall,
                r.parents,
                r.discovery_eval_counts,
            )
        )
    )


if __name__ == "__main__":
    main()
