"""DSPy's MIPROv2 on the benchmark task: one compile, printed as a JSON line. Runs inside DSPy's
virtual environment (it imports DSPy and ``mipro_task``, never asynclm).

    bench/.venv-dspy/bin/python bench/dspy_mipro_baseline.py '{"url": "http://127.0.0.1:PORT/v1",
        "threads": 32, "auto": "light", "seed": 0}'
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup at import
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mipro_task


def main() -> None:
    spec = json.loads(sys.argv[1])
    import dspy  # type: ignore[import-not-found]

    logging.getLogger("dspy").setLevel(logging.WARNING)
    task = dspy.LM("openai/task", api_base=spec["url"], api_key="k", cache=False, num_retries=0)
    prompt = dspy.LM("openai/prompt", api_base=spec["url"], api_key="k", cache=False, num_retries=0)
    dspy.configure(lm=task)
    data = mipro_task.splits(**spec.get("sizes", {}))
    train, val, test = ([dspy.Example(**d).with_inputs("word") for d in data[k]] for k in ("train", "val", "test"))
    threads = spec["threads"]
    optimizer = dspy.MIPROv2(
        metric=mipro_task.exact,
        prompt_model=prompt,
        task_model=task,
        auto=spec["auto"],
        num_threads=threads,
        seed=spec["seed"],
    )
    t0 = time.perf_counter()
    best = optimizer.compile(dspy.Predict("word -> answer"), trainset=train, valset=val)
    wall = time.perf_counter() - t0
    evaluate = dspy.Evaluate(devset=test, metric=mipro_task.exact, num_threads=threads, display_progress=False)
    result = evaluate(best)
    score = float(getattr(result, "score", result))
    print(json.dumps({"wall_s": wall, "test_score": score, "val_score": float(getattr(best, "score", -1.0))}))


if __name__ == "__main__":
    main()
