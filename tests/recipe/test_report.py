"""The recipe report's verdict: each anneal against stage 1, the soup against its best ingredient."""

from olmo2.recipe.report import _verdict, metric_rows


def test_the_verdict_counts_each_anneal_and_compares_the_soup_with_the_best_ingredient():
    rows = {
        "stage1": {"bpb/gsm": 1.50, "task/arc": 0.30},
        "anneal-seed1": {"bpb/gsm": 1.20, "task/arc": 0.34},
        "anneal-seed2": {"bpb/gsm": 1.60, "task/arc": 0.36},
        "soup": {"bpb/gsm": 1.20, "task/arc": 0.35},
    }
    gsm, arc, tally = _verdict(["bpb/gsm", "task/arc"], rows)
    assert gsm == (
        "- **bpb/gsm** (lower is better): stage 1 1.5000 → anneals 1.2000, 1.6000: 1 of 2 improved on "
        "stage 1; soup 1.2000, at least as good as its best ingredient (1.2000)."
    )
    assert arc.endswith(
        "2 of 2 improved on stage 1; soup 0.3500, worse by 0.0100 than its best ingredient (0.3600)."
    )
    assert tally.startswith("- The soup is at least as good as its best ingredient on 1 of 2 metrics")


def test_without_a_soup_there_is_no_soup_claim():
    rows = {"stage1": {"bpb/qa": 2.0}, "anneal-seed1": {"bpb/qa": 2.1}}
    assert _verdict(["bpb/qa"], rows) == [
        "- **bpb/qa** (lower is better): stage 1 2.0000 → anneals 2.1000: 0 of 1 improved on stage 1."
    ]


def test_a_bits_per_byte_task_counts_as_lower_is_better():
    """A generative task scored by bits per byte joins the held-out BPB metrics, not the task scores
    that the Pareto point averages (higher is better there)."""
    result = {
        "heldout": {"web": {"bits_per_byte": 1.5}},
        "tasks": {
            "summary": {"arc_easy:rc": 0.4, "gsm8k:bpb": 1.2},
            "tasks": {
                "arc_easy:rc": {"primary_metric": "acc_per_char", "primary": 0.4},
                "gsm8k:bpb": {"primary_metric": "bits_per_byte", "primary": 1.2},
            },
        },
    }
    names, rows = metric_rows({"soup": result})
    assert names == ["bpb/web", "task/arc_easy:rc", "bpb/gsm8k:bpb"]
    assert rows["soup"] == {"bpb/web": 1.5, "task/arc_easy:rc": 0.4, "bpb/gsm8k:bpb": 1.2}
