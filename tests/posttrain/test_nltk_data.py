"""The English Punkt model for the IFEval checks, from the pinned wheel into NLTK's punkt_tab layout."""

from __future__ import annotations

import nltk
import pytest

from olmo2.assets import cached_path
from olmo2.posttrain.nltk_data import PUNKT_ASSET, no_downloads, punkt_params, use_offline_nltk_data


def test_punkt_params_reads_literals_without_running_code(tmp_path):
    marker = tmp_path / "ran"
    model = tmp_path / "model.py"
    model.write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "ABBREV_TYPES = frozenset(('dr', 'mr'))\nSENT_STARTERS = frozenset(('however',))\n"
        "COLLOCATIONS = frozenset((('##number##', 'may'),))\nORTHO_CONTEXT = {'he': 4, 'the': 34}\n"
    )
    params = punkt_params(model)
    assert params["ABBREV_TYPES"] == {"dr", "mr"} and params["COLLOCATIONS"] == {("##number##", "may")}
    assert params["ORTHO_CONTEXT"] == {"he": 4, "the": 34} and not marker.exists()
    model.write_text("ABBREV_TYPES = frozenset(('dr',))\n")
    with pytest.raises(ValueError, match="no SENT_STARTERS, COLLOCATIONS, ORTHO_CONTEXT"):
        punkt_params(model)
    model.write_text("ABBREV_TYPES = __import__('os').getcwd()\n")
    with pytest.raises(ValueError):  # only literals are read
        punkt_params(model)


def test_offline_punkt_is_nltks_english_model():
    root = use_offline_nltk_data()
    params = punkt_params(cached_path(PUNKT_ASSET))
    lang = root / "tokenizers" / "punkt_tab" / "english"
    assert len((lang / "abbrev_types.txt").read_text().splitlines()) == len(params["ABBREV_TYPES"]) > 100
    assert len((lang / "ortho_context.tab").read_text().splitlines()) == len(params["ORTHO_CONTEXT"])
    tokenizer = nltk.data.load("nltk:tokenizers/punkt/english.pickle")  # what if-verifiable asks for
    text = "Dr. Smith met Mr. Jones at 5 p.m. in Washington. They talked. Then they left."
    assert tokenizer.tokenize(text) == [
        "Dr. Smith met Mr. Jones at 5 p.m. in Washington.",
        "They talked.",
        "Then they left.",
    ]
    assert nltk.word_tokenize("Mr. Smith's car.") == ["Mr.", "Smith", "'s", "car", "."]


def test_no_downloads_refuses_and_restores():
    original = nltk.download
    with no_downloads():
        assert nltk.download("stopwords") is False
    assert nltk.download is original
