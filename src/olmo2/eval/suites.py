"""Task-spec parsing and the named suites (``olmes_core``, ...).

A spec is a comma-separated list of suite names, task names and ``task:format`` names. A bare MC task
name means OLMES's rule: run both MC and cloze (RC) formats and report the better (``mc_or_rc``).
Bare ``mmlu`` is MC only (OLMES runs MMLU in MCF only), and so are bare ``agieval`` and ``mmlu_pro``;
bare ``gsm8k`` is 8-shot CoT generation with exact match, bare ``triviaqa`` generation with F1; other
generative tasks are scored by bits per byte of the gold continuation (``drop:gen`` etc. by F1).
"""

from __future__ import annotations

from olmo2.eval.reference_results import BASE_BENCHMARKS
from olmo2.eval.tasks import BPB_TASKS, CORE_MC_TASKS, LOCAL_TASKS, TASKS, EvalDataError, describe

__all__ = ["BASE_TABLE_TASKS", "SUITES", "available", "describe_all", "expand", "formats_of"]

CORE_9 = list(CORE_MC_TASKS)

# Paper Tab 6 column -> the task entry that scores it (OLMES settings of spec §7.1).
BASE_TABLE_TASKS: dict[str, str] = dict(
    zip(
        BASE_BENCHMARKS,
        [
            "mmlu:mc",
            "arc_challenge",
            "hellaswag",
            "winogrande",
            "naturalqs:gen",
            "drop:gen",
            "agieval:mc",
            "gsm8k:gen",
            "mmlu_pro:mc",
            "triviaqa:gen",
        ],
        strict=True,
    )
)

SUITES: dict[str, list[str]] = {
    # The OLMES core suite (spec §7.1): 9 MC tasks, best of MC and RC each, and MMLU (MC).
    "olmes_core": [*CORE_9, "mmlu:mc"],
    "core_9mcqa": CORE_9,
    "olmes_core_mc": [f"{t}:mc" for t in CORE_9] + ["mmlu:mc"],
    "olmes_core_rc": [f"{t}:rc" for t in CORE_9] + ["mmlu:rc"],
    # Generative tasks scored by bits per byte of the gold answer (cheap, smooth: for in-loop use).
    "olmes_gen_bpb": [f"{t}:bpb" for t in ("gsm8k", "drop", "naturalqs", "squad", "coqa", "jeopardy")],
    "math_code_bpb": [f"{t}:bpb" for t in ("minerva_math", "codex_humaneval", "codex_mbpp")],
    # Generative QA by greedy generation and answer-overlap F1 (OLMES's olmo_2_generative metrics).
    "olmes_gen": [f"{t}:gen" for t in ("naturalqs", "drop", "squad", "coqa")],
    # The 10 columns of the paper's base-model table (Tab 6), in its order; AGIEval and MMLU-Pro need
    # their local copies (``olmo2 eval --table base`` runs the columns that are available).
    "olmo2_base": list(BASE_TABLE_TASKS.values()),
}


def _bare(name: str) -> str | None:
    if name in CORE_MC_TASKS:
        return name  # mc_or_rc combination
    if name == "mmlu":
        return "mmlu:mc"
    if name == "gsm8k":
        return "gsm8k:gen"
    if name == "triviaqa":
        return "triviaqa:gen"
    if name in LOCAL_TASKS:
        return f"{name}:mc"
    if name in BPB_TASKS:
        return f"{name}:bpb"
    return None


def available() -> str:
    return (
        f"suites: {', '.join(SUITES)}\n"
        f"tasks: {', '.join([*CORE_9, 'mmlu', *LOCAL_TASKS, *BPB_TASKS, 'triviaqa'])}\n"
        f"formats: {', '.join(sorted(TASKS))}\n"
        "or any request dir of the task data, e.g. arc_easy/val_rc_5shot"
    )


def describe_all() -> str:
    """``olmo2 eval --list``: the suites, tasks and formats, then what each task format is."""
    return "\n".join([available(), *("  " + describe(fmt) for fmt in TASKS.values())])


def expand(spec: str | list[str]) -> list[str]:
    """The entries a spec names, in order, without duplicates. Entries are a ``TASKS`` key, a bare
    MC task (``mc_or_rc``) or a raw ``task/variant`` request dir."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name in SUITES:
            names = SUITES[name]
        elif name in TASKS or "/" in name:
            names = [name]
        elif _bare(name) is not None:
            names = [_bare(name)]
        else:
            raise EvalDataError(f"unknown task or suite {name!r}.\nAvailable:\n{available()}")
        out += [n for n in names if n not in out]
    if not out:
        raise EvalDataError(f"no tasks given.\nAvailable:\n{available()}")
    return out


def formats_of(entry: str) -> list[str]:
    """The scorable formats behind an entry (two for a ``mc_or_rc`` entry)."""
    return [f"{entry}:mc", f"{entry}:rc"] if entry in CORE_MC_TASKS else [entry]
