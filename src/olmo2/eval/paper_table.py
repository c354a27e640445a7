"""A model's row of one of the paper's tables beside the paper's own rows, as data and as markdown.

Generic over the table: the caller gives the paper's columns, the model's score per column (``None``
where the column did not run, with why) and the paper's reference rows. The paper's "Avg" is the
unweighted mean of all columns, so the model gets an Avg only when every column ran; "Avg (k)" is the
mean over the k columns that ran, computed for the paper's rows over the same columns, so the
comparison is like for like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from olmo2.eval.reference_results import Reference

__all__ = ["format_markdown", "paper_table"]


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def paper_table(
    columns: Sequence[str],
    name: str,
    scores: Mapping[str, float | None],
    references: Sequence[Reference],
    *,
    not_run: Mapping[str, str],
    tasks: Mapping[str, str],
    average_rule: str,
    notes: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> dict:
    """The table as data: the model's row (``scores`` ×100; every ``None`` column needs a reason in
    ``not_run``), its averages, and each reference row with its Avg (k) over the same columns. ``notes``:
    how a column that ran differs from the paper's setting."""
    missing = [c for c in columns if scores.get(c) is None and c not in not_run]
    if missing:
        raise ValueError(f"columns {missing} have no score and no reason why")
    model_scores = {c: scores.get(c) for c in columns}
    ran = [c for c in columns if model_scores[c] is not None]
    rows = [
        {
            "name": name,
            "source": "this run",
            "scores": model_scores,
            "avg": _mean(list(model_scores.values())),
            "avg_ran": _mean([model_scores[c] for c in ran]),
        }
    ]
    for ref in references:
        ref_scores = dict(zip(columns, ref.scores, strict=True))
        rows.append(
            {
                "name": ref.name,
                "source": f"paper {ref.source}",
                "scores": ref_scores,
                "avg": ref.avg,
                "avg_ran": _mean([ref_scores[c] for c in ran]),
                "note": ref.note,
            }
        )
    return {
        "columns": list(columns),
        "tasks": dict(tasks),
        "ran": ran,
        "not_run": {c: not_run[c] for c in columns if c in not_run},
        "notes": {c: notes[c] for c in ran if c in (notes or {})},
        "average_rule": average_rule,
        "limit": limit,
        "rows": rows,
    }


def _cell(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def format_markdown(table: dict) -> str:
    """A markdown table: the model first (bold), then the paper's rows; notes on what did not run."""
    k = len(table["ran"])
    cols = [c + ("†" if c in table["not_run"] else "") for c in table["columns"]]
    lines = [f"| model | Avg | Avg ({k}) | {' | '.join(cols)} |", "|---" * (len(cols) + 3) + "|"]
    for i, row in enumerate(table["rows"]):
        name = f"**{row['name']}**" if i == 0 else f"{row['name']} ({row['source']})"
        cells = [
            _cell(row["avg"]),
            _cell(row["avg_ran"]),
            *(_cell(row["scores"][c]) for c in table["columns"]),
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    notes = [f"† {col}: {why}" for col, why in table["not_run"].items()]
    notes += [f"{col}: {note}" for col, note in table.get("notes", {}).items()]
    notes.append(table["average_rule"] + ".")
    if table["limit"] is not None:
        notes.append(
            f"--limit {table['limit']}: at most {table['limit']} docs per task, not comparable with the paper."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"
