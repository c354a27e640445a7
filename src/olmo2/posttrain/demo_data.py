"""Offline demo data for the miniature SFT → DPO → RLVR run, from ``reasoning-gym`` generators.

Everything is generated locally with a seed (no download): ``gsm_symbolic`` grade-school word problems
with worked solutions (``metadata['answer_cot']``) and the number answer (``answer``). The three files
use disjoint seeds, so no prompt is shared between stages. They are training data only: the
generator's templates come from GSM-Symbolic, which was built from GSM8K problems, so do not report
GSM8K scores of a model trained on them as uncontaminated.

* ``sft.jsonl``: ``{"messages": [user question, assistant worked solution ending "#### N"]}``
* ``dpo.jsonl``: ``{"prompt", "chosen", "rejected"}``: the verified-correct solution vs the same
  solution with its final number perturbed (checked to fail the verifier)
* ``rlvr.jsonl``: ``{"messages", "ground_truth", "verifier": "gsm8k"}``
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from olmo2.posttrain.verifiers import verify

__all__ = ["gsm_problems", "write_demo_data"]

TASK = "gsm_symbolic"


def _with_final_answer(cot: str, answer: str) -> str:
    """The solution ending in ``#### answer`` (the GSM8K convention the verifier reads first)."""
    cot = cot.strip()
    return cot if re.search(r"####\s*\S+\s*$", cot) else f"{cot}\n#### {answer}"


def gsm_problems(n: int, seed: int, task: str = TASK) -> list[dict]:
    """``n`` problems as ``{"question", "answer", "solution"}``, the solution verified correct."""
    import reasoning_gym

    out = []
    for x in reasoning_gym.create_dataset(task, seed=seed, size=n):
        answer = str(x["answer"]).strip()
        cot = x.get("metadata", {}).get("answer_cot") or f"The answer is {answer}."
        solution = _with_final_answer(cot, answer)
        if verify("gsm8k", solution, answer):
            out.append({"question": x["question"], "answer": answer, "solution": solution})
    return out


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
    out_dir: str | Path, *, n_sft: int = 256, n_dpo: int = 128, n_rlvr: int = 128, seed: int = 0
) -> dict[str, Path]:
    """Write ``sft.jsonl``, ``dpo.jsonl`` and ``rlvr.jsonl`` under ``out_dir``; return their paths."""
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
        for p in gsm_problems(n_sft, seed * 3 + 1)
    ]
    dpo = []
    for p in gsm_problems(n_dpo, seed * 3 + 2):
        rejected = _wrong(p["solution"], p["answer"], rng)
        if not verify("gsm8k", rejected, p["answer"]):
            dpo.append({"prompt": p["question"], "chosen": p["solution"], "rejected": rejected})
    rlvr = [
        {
            "messages": [{"role": "user", "content": p["question"]}],
            "ground_truth": p["answer"],
            "verifier": "gsm8k",
        }
        for p in gsm_problems(n_rlvr, seed * 3 + 3)
    ]
    paths = {}
    for name, rows in (("sft", sft), ("dpo", dpo), ("rlvr", rlvr)):
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
