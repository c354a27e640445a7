"""Offline demo data for the miniature SFT → DPO → RLVR run, from seeded ``reasoning-gym`` generators.

Everything is generated locally (no download). Two tasks, both answered GSM8K-style (a worked solution
ending ``#### N``, read by the ``gsm8k`` verifier):

* ``chain_sum`` (the default): one-digit sums and differences, ``"... problem: 4 - 1 ="``, solved as
  ``"4 - 1 = 3\\n#### 3"``. The 27M-parameter ``demo`` model learns these in a few minutes of SFT and
  then samples correct answers about a third of the time, which is what RLVR needs to have something
  to reinforce. There are only about 200 such problems, so the three files share problems although
  each is drawn with its own seed: a demonstration of the loop, not of generalisation.
* ``gsm_symbolic``: grade-school word problems with worked solutions (``metadata['answer_cot']``),
  too hard for the demo model (its RLVR reward stays 0) but the shape of real GSM8K training data.
  Its templates come from GSM-Symbolic, built from GSM8K problems: do not report GSM8K scores of a
  model trained on it as uncontaminated.

* ``sft.jsonl``: ``{"messages": [user question, assistant worked solution ending "#### N"]}``
* ``dpo.jsonl``: ``{"prompt", "chosen", "rejected"}``: the verified-correct solution vs the same
  solution with its final number perturbed (checked to fail the verifier)
* ``rlvr.jsonl``: ``{"messages", "ground_truth", "verifier": "gsm8k"}``, distinct questions; the demo
  uses a small set revisited over many steps, so the reward curve shows the policy improving on it
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from olmo2.posttrain.verifiers import verify

__all__ = ["TASKS", "problems", "write_demo_data"]

# reasoning-gym dataset arguments per task
TASKS: dict[str, dict] = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "gsm_symbolic": {},
}


def _with_final_answer(cot: str, answer: str) -> str:
    """The solution ending in ``#### answer`` (the GSM8K convention the verifier reads first)."""
    cot = cot.strip()
    return cot if re.search(r"####\s*\S+\s*$", cot) else f"{cot}\n#### {answer}"


def _solution(task: str, item: dict, answer: str) -> str:
    meta = item.get("metadata", {})
    if task == "chain_sum":
        return f"{meta['expression']} = {answer}"
    return meta.get("answer_cot") or f"The answer is {answer}."


def problems(task: str, n: int, seed: int) -> list[dict]:
    """``n`` seeded ``task`` problems as ``{"question", "answer", "solution"}``, each solution verified
    correct (a generated solution that fails the verifier is dropped, so fewer may come back)."""
    import reasoning_gym

    if task not in TASKS:
        raise ValueError(f"unknown demo task {task!r}; known: {sorted(TASKS)}")
    out = []
    for x in reasoning_gym.create_dataset(task, seed=seed, size=n, **TASKS[task]):
        answer = str(x["answer"]).strip()
        solution = _with_final_answer(_solution(task, x, answer), answer)
        if verify("gsm8k", solution, answer):
            out.append({"question": x["question"], "answer": answer, "solution": solution})
    return out


def _distinct(rows: list[dict], n: int) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r["question"] not in seen:
            seen.add(r["question"])
            out.append(r)
    return out[:n]


def _wrong(solution: str, answer: str, rng: random.Random) -> str:
    """The solution with its final answer replaced by a nearby wrong number."""
    try:
        value = int(answer)
    except ValueError:
        value = round(float(answer))
    wrong = value + rng.choice([-1, 1]) * rng.randint(1, max(2, abs(value) // 5))
    head, _, _ = solution.rpartition("####")
    head = re.sub(rf"\b{re.escape(answer)}\b(?!.*\b{re.escape(answer)}\b)", str(wrong), head, flags=re.S)
    return f"{head}#### {wrong}"


def write_demo_data(
    out_dir: str | Path,
    *,
    task: str = "chain_sum",
    n_sft: int = 2000,
    n_dpo: int = 128,
    n_rlvr: int = 16,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``sft.jsonl``, ``dpo.jsonl`` and ``rlvr.jsonl`` under ``out_dir``; return their paths.
    Each file draws from its own seed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sft = [
        {
            "messages": [
                {"role": "user", "content": p["question"]},
                {"role": "assistant", "content": p["solution"]},
            ]
        }
        for p in problems(task, n_sft, seed * 3 + 1)
    ]
    dpo = []
    for p in problems(task, n_dpo, seed * 3 + 2):
        rejected = _wrong(p["solution"], p["answer"], rng)
        if not verify("gsm8k", rejected, p["answer"]):
            dpo.append({"prompt": p["question"], "chosen": p["solution"], "rejected": rejected})
    rlvr = [
        {
            "messages": [{"role": "user", "content": p["question"]}],
            "ground_truth": p["answer"],
            "verifier": "gsm8k",
        }
        for p in _distinct(problems(task, 4 * n_rlvr, seed * 3 + 3), n_rlvr)
    ]
    paths = {}
    for name, rows in (("sft", sft), ("dpo", dpo), ("rlvr", rlvr)):
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
