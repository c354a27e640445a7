"""Task-spec parsing and the named suites (``olmes_core``, ...).

A spec is a comma-separated list of suite names, task names and ``task:format`` names. A bare MC task
name means OLMES's rule: run both MC and cloze (RC) formats and report the better (``mc_or_rc``).
Bare ``mmlu`` is MC only (OLMES runs MMLU in MCF only), bare ``gsm8k`` is 8-shot CoT generation with
exact match, and other generative tasks are scored by bits per byte of the gold continuation.
"""

from __future__ import annotations

from olmo2.eval.tasks import BPB_TASKS, CORE_MC_TASKS, TASKS, EvalDataError, describe

__all__ = ["SUITES", "available", "describe_all", "expand", "formats_of"]

CORE_9 = list(CORE_MC_TASKS)

SUITES: dict[str, list[str]] = {
    # The OLMES core suite (spec §7.1): 9 MC tasks, best of MC and RC each, and MMLU (MC).
    "olmes_core": [*CORE_9, "mmlu:mc"],
    "core_9mcqa": CORE_9,
    "olmes_core_mc": [f"{t}:mc" for t in CORE_9] + ["mmlu:mc"],
    "olmes_core_rc": [f"{t}:rc" for t in CORE_9] + ["mmlu:rc"],
    # Generative tasks scored by bits per byte of the gold answer (cheap, smooth: for in-loop use).
    "olmes_gen_bpb": [f"{t}:bpb" for t in ("gsm8k", "drop", "naturalqs", "squad", "coqa", "jeopardy")],
    "math_code_bpb": [f"{t}:bpb" for t in ("minerva_math", "codex_humaneval", "codex_mbpp")],
}


def _bare(name: str) -> str | None:
    if name in CORE_MC_TASKS:
        return name  # mc_or_rc combination
    if name == "mmlu":
        return "mmlu:mc"
    if name == "gsm8k":
        return "gsm8k:gen"
    if name in BPB_TASKS:
        return f"{name}:bpb"
    return None


def available() -> str:
    return (
        f"suites: {', '.join(SUITES)}\n"
        f"tasks: {', '.join([*CORE_9, 'mmlu', *BPB_TASKS])}\n"
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
