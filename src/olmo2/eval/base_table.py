"""``olmo2 eval MODEL --table base``: the model's row of the paper's base-model table (Tab 6) beside the
paper's rows, as text, JSON, markdown and a PNG.

The columns are the paper's, in its order (``BASE_BENCHMARKS``), each our OLMES task entry
(``suites.BASE_TABLE_TASKS``), scored ×100 as the paper prints them. Every column runs from the pinned
data except AGIEval and MMLU-Pro, which no pinned package ships: they run when their local copies are
given (``--agieval DIR``, ``--mmlu-pro DIR``) and are marked "not run" otherwise. The paper's "Avg" is the
unweighted mean of the 10 columns, so the model gets an Avg only when all 10 ran; "Avg (k)" is the mean
over the k columns that ran, computed for the paper's rows over the same columns, so the comparison is
like for like.
"""

from __future__ import annotations

from pathlib import Path

from olmo2.eval.instruct_table import run_instruct_table
from olmo2.eval.paper_table import format_markdown, paper_table
from olmo2.eval.reference_results import BASE, BASE_BENCHMARKS
from olmo2.eval.runner import run_eval, write_json
from olmo2.eval.suites import BASE_TABLE_TASKS
from olmo2.eval.tasks import LOCAL_TASKS
from olmo2.train.distributed import launch_rank

__all__ = ["base_table", "eval_command", "format_markdown", "plot_base_table", "run_base_table"]

TABLES = ("base", "instruct")
NOT_RUN = "not run"
PLOTTED_REFERENCES = ("OLMo 2 1B", "OLMo 2 7B", "OLMo 2 13B", "OLMo 2 32B")
MODEL_COLOR = "#d6336c"
REFERENCE_COLORS = ("#a5d8ff", "#74c0fc", "#339af0", "#1864ab")  # light to dark by size


def _local_key(entry: str) -> str | None:
    task = entry.split(":")[0]
    return task if task in LOCAL_TASKS else None


def base_table(results: dict, name: str, not_run: dict[str, str] | None = None) -> dict:
    """The table as data: the model's scores (×100, ``None`` where a column did not run, with why in
    ``not_run``), its averages, and every reference row with its averages over the same columns."""
    not_run = dict(not_run or {})
    scores = {}
    for col in BASE_BENCHMARKS:
        task = results["tasks"].get(BASE_TABLE_TASKS[col])
        scores[col] = None if task is None else 100 * task["primary"]
        if task is None:
            not_run.setdefault(col, NOT_RUN)
    return paper_table(
        BASE_BENCHMARKS,
        name,
        scores,
        BASE,
        not_run=not_run,
        tasks=BASE_TABLE_TASKS,
        average_rule="Avg: unweighted mean of the 10 columns (paper Tab 6); Avg (k): mean of the k "
        "columns that ran, for every row",
        limit=results.get("settings", {}).get("limit"),
    )


def plot_base_table(table: dict, out: str | Path) -> Path:
    """Grouped bars per column (and Avg (k)): the model beside the paper's OLMo 2 rows; columns that did
    not run are labelled so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    labels = [*table["columns"], f"Avg ({len(table['ran'])})"]
    refs = {r["name"]: r for r in table["rows"][1:]}
    rows = [table["rows"][0], *(refs[n] for n in PLOTTED_REFERENCES if n in refs)]
    width = 0.8 / len(rows)
    left = -(len(rows) - 1) / 2 * width  # offset of the model's bar
    fig, ax = plt.subplots(figsize=(13, 4.8))
    for j, row in enumerate(rows):
        values = [row["scores"][c] for c in table["columns"]] + [row["avg_ran"]]
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(
            [x for x, v in zip(xs, values, strict=True) if v is not None],
            [v for v in values if v is not None],
            width,
            label=row["name"] if j == 0 else f"{row['name']} (paper)",
            color=MODEL_COLOR if j == 0 else REFERENCE_COLORS[(j - 1) % len(REFERENCE_COLORS)],
        )
    for i, col in enumerate(table["columns"]):
        if col in table["not_run"]:
            ax.text(
                i + left, 2, NOT_RUN, rotation=90, ha="center", va="bottom", fontsize=8, color=MODEL_COLOR
            )
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_ylabel("score (paper Tab 6 metrics, ×100)")
    ax.set_ylim(0, 100)
    title = "Base-model table (paper Tab 6)"
    if table["limit"] is not None:
        title += f", --limit {table['limit']} (not comparable)"
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out


def run_base_table(
    model: str | Path,
    *,
    agieval: str | Path | None = None,
    mmlu_pro: str | Path | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    **eval_options,
) -> dict:
    """Run every available column of the paper's base-model table, then print the table and write
    ``out`` (JSON: the results and the table), its ``.md`` and ``.png`` siblings."""
    local = {"agieval": agieval, "mmlu_pro": mmlu_pro}
    entries, not_run = [], {}
    for col in BASE_BENCHMARKS:
        entry = BASE_TABLE_TASKS[col]
        key = _local_key(entry)
        if key is not None and local[key] is None:
            not_run[col] = (
                f"not run: no pinned package ships {col}; give a local copy with "
                f"--{key.replace('_', '-')} DIR (docs/eval.md)"
            )
        else:
            entries.append(entry)
    out = Path(out) if out is not None else Path("base-table.json")
    results = run_eval(
        model,
        ",".join(entries),
        out=out,
        quiet=quiet,
        local_data={k: v for k, v in local.items() if v is not None},
        **eval_options,
    )
    table = base_table(results, str(model), not_run)
    results["table"] = table
    if launch_rank() != 0:  # under torchrun every rank holds the merged results; rank 0 writes them
        return results
    write_json(results, out)
    markdown = format_markdown(table)
    md_path = out.with_suffix(".md")
    md_path.write_text(f"# {model}: paper Tab 6 columns\n\n{markdown}", encoding="utf-8")
    png_path = plot_base_table(table, out.with_suffix(".png"))
    if not quiet:
        print(markdown)
        print(f"table written to {out}, {md_path} and {png_path}")
    return results


def eval_command(
    model: str | Path,
    *,
    tasks: str | None = None,
    table: str | None = None,
    agieval: str | Path | None = None,
    mmlu_pro: str | Path | None = None,
    ifeval_data: str | Path | None = None,
    **eval_options,
) -> dict:
    """Score MODEL on TASKS (default olmes_core) and print a table; --out writes JSON. With --table base,
    run the paper's base-model table (Tab 6) instead and print/save the model's row beside the paper's
    rows (JSON, markdown, PNG). AGIEval and MMLU-Pro are in no pinned package: give their local copies
    with --agieval DIR / --mmlu-pro DIR (see docs/eval.md). With --table instruct, run the offline columns
    of the Instruct table (Tab 7) through the chat template; IFEval's prompts come from a local file
    (--ifeval-data PATH)."""
    if ifeval_data is not None and table != "instruct":
        raise ValueError("--ifeval-data is for --table instruct")
    if table is not None:
        if tasks is not None:
            raise ValueError("give --tasks or --table, not both")
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
        if table == "instruct":
            if agieval is not None or mmlu_pro is not None:
                raise ValueError("--agieval and --mmlu-pro are for --table base")
            eval_options.pop("all_norms", None)  # the Instruct table has no ranked task
            return run_instruct_table(model, ifeval_data=ifeval_data, **eval_options)
        return run_base_table(model, agieval=agieval, mmlu_pro=mmlu_pro, **eval_options)
    local = {k: v for k, v in {"agieval": agieval, "mmlu_pro": mmlu_pro}.items() if v is not None}
    return run_eval(model, tasks or "olmes_core", local_data=local, **eval_options)
