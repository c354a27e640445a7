"""The Pareto frontier, the shipped reference tables (spec §7.2 / §7.3), and the plot."""

import json

import pytest

from olmo2.eval.reference_results import BASE, BASE_BENCHMARKS, INSTRUCT, find, reference_table
from olmo2.recipe.pareto import load_runs, pareto_frontier, plot_pareto


def test_frontier_on_a_small_example():
    points = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 58.0), (0.5, 40.0), (4.0, 70.0), (4.0, 70.0)]
    # (2, 55) and (3, 58) are beaten by (2, 60); the duplicate best points both stay.
    assert pareto_frontier(points) == [4, 0, 1, 5, 6]
    assert pareto_frontier([]) == []
    assert pareto_frontier([(1.0, 1.0), (1.0, 2.0)]) == [1]  # same FLOPs, higher score wins


def test_base_table_matches_the_spec():
    assert len(BASE) == 29 and len(INSTRUCT) == 26
    olmo = find("OLMo 2 7B")
    assert (olmo.avg, olmo.flops_e23, olmo.openness, olmo.source) == (62.9, 1.8, "fully open", "Tab 6")
    assert dict(zip(BASE_BENCHMARKS, olmo.scores, strict=True))["GSM8K"] == 67.5
    assert find("OLMo 2 13B").flops == pytest.approx(4.6e23)
    assert (find("Llama 3.1 8B").avg, find("Llama 3.1 8B").flops_e23) == (61.8, 7.2)
    assert find("Gemma 2 2B").source == "Tab 22" and find("SmolLM2 1.7B").openness is None
    assert find("Mistral 7B").flops is None and find("Mistral 7B").flops_status == "n/a"
    assert find("Qwen 3 8B").flops_status == "n/c"
    assert find("OLMo 2 32B", "instruct").avg == 68.8 and find("Qwen QwQ 32B", "instruct").avg is None


def test_table_errors_are_corrected_and_noted():
    qwen = find("Qwen 2.5 32B")
    assert qwen.flops_e23 == 35.0 == find("Qwen 2.5 32B", "instruct").flops_e23 and "16.0" in qwen.note
    assert find("OLMo 2 1B").flops_e23 == 0.35 and "0.4" in find("OLMo 2 1B").note
    assert find("OLMo 2 32B").avg == 73.3 and "43.3" in find("OLMo 2 32B").note


def test_averages_agree_with_their_columns():
    known_off = {"Qwen 3 8B", "OLMo 2 32B"}  # spec §12.6
    for kind in ("base", "instruct"):
        for ref in reference_table(kind):
            if ref.avg is None or ref.name in known_off:
                continue
            assert sum(ref.scores) / len(ref.scores) == pytest.approx(ref.avg, abs=0.051), ref.name


def test_olmo2_is_on_the_paper_frontier():
    plotted = [r for r in BASE if r.flops is not None]
    front = {plotted[i].name for i in pareto_frontier([(r.flops, r.avg) for r in plotted])}
    assert {"OLMo 2 7B", "OLMo 2 13B", "OLMo 2 32B"} <= front and "Llama 3.1 8B" not in front


def test_runs_file_schema(tmp_path):
    good = [{"name": "soup", "flops": 3e16, "score": 35.2, "score_name": "mini avg", "extra": 1}]
    (tmp_path / "runs.json").write_text(json.dumps(good))
    (tmp_path / "one.json").write_text(
        json.dumps({"name": "s1", "flops": 2e16, "score": 31, "score_name": "m"})
    )
    runs = load_runs([tmp_path / "runs.json", tmp_path / "one.json"])
    assert [(r.name, r.flops, r.score) for r in runs] == [("soup", 3e16, 35.2), ("s1", 2e16, 31.0)]
    for bad, message in (
        ([{"name": "x", "flops": 1e16, "score": 1}], "missing score_name"),
        ([{"name": "x", "flops": -1, "score": 1, "score_name": "m"}], "positive"),
        ([{"name": "x", "flops": "many", "score": 1, "score_name": "m"}], "numbers"),
        ([3], "expected an object"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_runs([tmp_path / "bad.json"])


def test_plot_is_written(tmp_path):
    runs = [
        {"name": "stage 1", "flops": 2e16, "score": 30.0, "score_name": "mini avg"},
        {"name": "soup", "flops": 3e16, "score": 33.0, "score_name": "mini avg"},
    ]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    result = plot_pareto(tmp_path / "out" / "pareto.png", load_runs([tmp_path / "runs.json"]))
    assert result.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result.path.stat().st_size > 20_000
    assert "OLMo 2 13B" in result.frontier and result.run_frontier == ["stage 1", "soup"]
    assert "Mistral 7B" in result.not_plotted and "wrote" in result.summary()
    alone = plot_pareto(tmp_path / "instruct.png", table="instruct", labels=False)
    assert alone.path.is_file() and "Qwen QwQ 32B" in alone.not_plotted
    with pytest.raises(ValueError, match="unknown reference table"):
        plot_pareto(tmp_path / "x.png", table="chat")
