"""``olmo2 eval MODEL --table instruct``: the model's row of the paper's Instruct table (Tab 7) beside the
paper's rows, as text, JSON and markdown.

The columns are the paper's, in its order (``INSTRUCT_BENCHMARKS``), scored ×100. Those this package can
score offline run through the chat template (``instruct_suite``); DROP (3-shot F1, no chat template in
the paper) runs through the ``drop:gen`` generative task, 5-shot as OLMES's request file has it. The rest say what they
need: AlpacaEval 2 and Safety an LLM judge or classifier, BBH, PopQA and TruthfulQA data that no pinned
package ships, IFEval a local copy of its prompts (``--ifeval-data``). The Avg rule is the paper's: the
unweighted mean of the 10 columns (FLOPs excluded), so the model gets an Avg only when all 10 ran.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

from olmo2 import __version__
from olmo2.eval.instruct_suite import load_chat_task, score_chat_task
from olmo2.eval.lm import load_eval_model
from olmo2.eval.paper_table import format_markdown, paper_table
from olmo2.eval.reference_results import INSTRUCT, INSTRUCT_BENCHMARKS
from olmo2.eval.runner import Evaluator, TaskProgress, check_writable, write_results
from olmo2.eval.shard import Shard
from olmo2.train.distributed import init_distributed

__all__ = ["INSTRUCT_TABLE_TASKS", "NEEDS", "instruct_table", "run_instruct_table"]

DROP_TASK = "drop:gen"  # the generative DROP task (F1)

# Paper Tab 7 column -> the task that scores it here.
INSTRUCT_TABLE_TASKS: dict[str, str] = {
    "DROP": DROP_TASK,
    "GSM8K": "gsm8k:chat",
    "IFE": "ifeval:chat",
    "MATH": "minerva_math:chat",
    "MMLU": "mmlu:chat",
}
# Columns that cannot run offline from pinned data, and what they need.
NEEDS: dict[str, str] = {
    "AE2": "needs a judge: AlpacaEval 2 is a length-controlled win rate judged by GPT-4",
    "BBH": "needs data: BBH is in no pinned package",
    "Safety": "needs a judge: the Tülu 3 safety suite is scored by classifiers and its data is not pinned",
    "PQA": "needs data: PopQA is in no pinned package",
    "TQA": "needs data: TruthfulQA is in no pinned package",
}
NEEDS_IFEVAL = "needs --ifeval-data: the IFEval prompts (input_data.jsonl) are in no pinned package"
# How a column that runs here differs from the paper's setting.
NOTES: dict[str, str] = {
    "DROP": f"{DROP_TASK}: OLMES's 5-shot DROP of the pinned request file, F1, no chat template "
    "(the paper: 3-shot)",
}
AVERAGE_RULE = (
    "Avg: unweighted mean of the 10 columns (paper Tab 7, FLOPs excluded); Avg (k): mean of the k "
    "columns that ran, for every row"
)


def instruct_table(results: dict, name: str, not_run: dict[str, str]) -> dict:
    """The Tab 7 layout of ``results`` (task name -> metrics with ``primary``) beside the paper's rows."""
    scores = {}
    for col in INSTRUCT_BENCHMARKS:
        task = results["tasks"].get(INSTRUCT_TABLE_TASKS.get(col, ""))
        scores[col] = None if task is None else 100 * task["primary"]
    return paper_table(
        INSTRUCT_BENCHMARKS,
        name,
        scores,
        INSTRUCT,
        not_run={**NEEDS, **not_run},
        tasks=INSTRUCT_TABLE_TASKS,
        average_rule=AVERAGE_RULE,
        notes=NOTES,
        limit=results.get("settings", {}).get("limit"),
    )


def run_instruct_table(
    model: str | Path,
    *,
    ifeval_data: str | Path | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str | None = None,
    backend: str = "auto",
    tokenizer: str | None = None,
    revision: str | None = None,
    gen_max_tokens: int | None = None,
    keep_docs: bool = False,
    quiet: bool = False,
    max_batch_tokens: int = 8192,
) -> dict:
    """Score every column of Tab 7 that can run offline, print the table beside the paper's rows and write
    ``out`` (default ``instruct-table.json``: results and table) and its ``.md`` sibling. Under torchrun
    the ranks split every task's batches; rank 0 prints and writes."""
    not_run = {} if ifeval_data is not None else {"IFE": NEEDS_IFEVAL}
    columns = [c for c in INSTRUCT_BENCHMARKS if c in INSTRUCT_TABLE_TASKS and c not in not_run]
    # The chat tasks' data is read before the model loads: a bad --ifeval-data line fails at once.
    chat = {
        INSTRUCT_TABLE_TASKS[c]: load_chat_task(INSTRUCT_TABLE_TASKS[c], limit=limit, ifeval_data=ifeval_data)
        for c in columns
        if INSTRUCT_TABLE_TASKS[c] != DROP_TASK
    }
    env = init_distributed(device)
    t_start = time.perf_counter()
    try:
        path = check_writable(out or "instruct-table.json") if env.is_main else None
        lm, tok = load_eval_model(
            model,
            device=str(env.device),
            dtype=dtype,
            backend=backend,
            tokenizer=tokenizer,
            revision=revision,
        )
        shard = Shard(env.rank, env.world_size)
        verbose = not quiet and env.is_main
        tasks: dict[str, dict] = {}
        for col in columns:
            name = INSTRUCT_TABLE_TASKS[col]
            if name not in chat:  # DROP: no chat template (spec §7.3)
                ev = Evaluator(
                    tok,
                    name,
                    limit=limit,
                    batch_size=batch_size,
                    max_batch_tokens=max_batch_tokens,
                    gen_max_tokens=gen_max_tokens,
                    keep_docs=keep_docs,
                    verbose=verbose,
                    shard=shard,
                )
                tasks[name] = ev(lm)["tasks"][name]
                continue
            t0 = time.perf_counter()
            progress = TaskProgress(name) if verbose else None
            try:
                metrics, records = score_chat_task(
                    lm,
                    tok,
                    chat[name],
                    batch_size=max(1, batch_size // 2),
                    max_new_tokens=gen_max_tokens,
                    progress=progress,
                    shard=shard,
                )
            finally:
                if progress is not None:
                    progress.close()
            metrics["seconds"] = round(time.perf_counter() - t0, 3)
            if keep_docs:
                metrics["per_doc"] = records
            tasks[name] = metrics
            if verbose:
                line = (
                    f"{name}: {metrics['primary_metric']} = {metrics['primary']:.4f} ({metrics['seconds']} s)"
                )
                print(f"olmo2 eval: {line}", file=sys.stderr)
    finally:
        if env.owns_process_group:
            torch.distributed.destroy_process_group()
    param = next(iter(lm.model.parameters()), None) if hasattr(lm, "model") else None
    results = {
        "model": str(model),
        "settings": {
            "table": "instruct",
            "limit": limit,
            "revision": revision,
            "batch_size": batch_size,
            "gen_max_tokens": gen_max_tokens,
            "ifeval_data": None if ifeval_data is None else str(ifeval_data),
            "model_backend": type(lm).__name__,
            "dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
            "device": str(lm.device),
            "ranks": shard.world_size,
            "tokenizer_sha256": tok.fingerprint,
            "olmo2": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "tasks": tasks,
        "timing": {"score_seconds": round(time.perf_counter() - t_start, 3)},
    }
    results["table"] = instruct_table(results, str(model), not_run)
    if path is None:
        return results
    write_results(results, path)
    markdown = format_markdown(results["table"])
    md_path = path.with_suffix(".md")
    md_path.write_text(f"# {model}: paper Tab 7 columns\n\n{markdown}", encoding="utf-8")
    if not quiet:
        print(markdown)
        print(f"table written to {path} and {md_path}")
    return results
