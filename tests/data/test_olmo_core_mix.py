"""OLMo-core mix lists -> mix YAML: the shipped lists against OLMo-core's own reader, shares from token
counts over real files, and a clear error naming the line for each kind of bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from olmo2.cli import main
from olmo2.data.loader import TrainLoader
from olmo2.data.mix import expand_variables, load_mix_config, resolve_mix
from olmo2.data.olmo_core_mix import MixListError, import_mix_list, parse_share

mixes = pytest.importorskip("olmo_core.data.mixes")
TOKENIZER = "allenai/dolma2-tokenizer"
SEQ = 32


def olmo_core_listing(name: str, root: str) -> tuple[list[str], list[str]]:
    """(paths, labels) of a shipped list as OLMo-core's ``DataMix.build`` gives them."""
    return mixes.DataMix(name).build(root, TOKENIZER)


def shipped(name: str) -> Path:
    return Path(mixes.__file__).parent / f"{name}.txt"


@pytest.mark.parametrize("name", ["dolma17", "OLMoE-mix-0824"])
def test_shipped_lists_import_as_olmo_core_reads_them(name, tmp_path):
    root = "s3://ai2-llm"
    paths, labels = olmo_core_listing(name, root)
    result = import_mix_list(shipped(name), root, tmp_path / "mix.yaml", TOKENIZER, sizes=False)

    assert result.lines == len(shipped(name).read_text().splitlines())
    assert result.entries == len(paths) and result.lines == result.entries + result.skipped
    cfg = load_mix_config(tmp_path / "mix.yaml")
    assert cfg.mode == "as-is" and cfg.name == name
    assert [s.name for s in cfg.sources] == list(dict.fromkeys(labels))
    for source in cfg.sources:
        theirs = [p for p, label in zip(paths, labels, strict=True) if label == source.name]
        ours = [expand_variables(p, cfg.variables) for p in source.paths]
        assert ours == list(dict.fromkeys(theirs))  # each file once, in list order
        assert source.max_repeat == max(Counter(theirs).values())  # dolma17 reads wiki twice
    assert len(result.sources) == len(set(labels))


def test_given_shares_for_every_label_touch_no_file(tmp_path):
    _, labels = olmo_core_listing("dolma17", "/nowhere")
    share = 1 / len(set(labels))
    given = [(label, share) for label in dict.fromkeys(labels)]
    result = import_mix_list(shipped("dolma17"), str(tmp_path / "nowhere"), tmp_path / "m.yaml", shares=given)
    cfg = load_mix_config(tmp_path / "m.yaml")
    assert cfg.mode == "shares" and [s.share for s in cfg.sources] == [share] * len(given)
    assert all(s.tokens is None for s in result.sources)
    wiki = next(s for s in cfg.sources if s.name == "wiki")
    assert wiki.max_repeat == 2


def write_local_list(tmp_path: Path, write_tokens) -> tuple[Path, Path]:
    """A list over real token files: web (3 files), code (2 files, the first listed twice)."""
    root = tmp_path / "data"
    write_tokens(root / "web" / TOKENIZER, n_files=3, tokens=6000, seed=1)
    write_tokens(root / "code" / TOKENIZER, n_files=2, tokens=4000, seed=2)
    lines = ["# web and code", ""]
    lines += [f"web,web/{{TOKENIZER}}/part-{i:05d}.npy" for i in range(3)]
    lines += [f"code,code/{{TOKENIZER}}/part-{i:05d}.npy" for i in (0, 1, 0)]
    listing = tmp_path / "local.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing, root


def test_local_list_shares_follow_token_counts_and_the_loader_reads_it(tmp_path, write_tokens):
    listing, root = write_local_list(tmp_path, write_tokens)
    result = import_mix_list(listing, str(root), tmp_path / "mix.yaml")
    assert (result.lines, result.skipped, result.entries, result.files) == (8, 2, 6, 5)

    sizes = {p: p.stat().st_size // 4 for p in root.rglob("*.npy")}
    web = sum(n for p, n in sizes.items() if "web" in p.parts)
    code_files = sorted(p for p in sizes if "code" in p.parts)
    code = 2 * sizes[code_files[0]] + sizes[code_files[1]]  # the first file is listed twice
    cfg = load_mix_config(tmp_path / "mix.yaml")
    assert [s.share for s in cfg.sources] == pytest.approx(
        [web / (web + code), code / (web + code)], abs=1e-12
    )
    assert cfg.sources[1].max_repeat == pytest.approx(code / sum(sizes[p] for p in code_files))

    mix = resolve_mix(cfg, SEQ)
    web_src, code_src = mix.sources
    assert web_src.target == web_src.available  # web is read once, as OLMo-core would
    assert code_src.target == pytest.approx(code_src.available * 1.5, abs=1)  # code 1.5x, as listed
    batch = next(iter(TrainLoader(mix, global_batch_size=8, micro_batch_size=2, seed=0)))
    rows = np.concatenate([mb["input_ids"].numpy() for mb in batch.micro_batches()])
    instances = {  # every SEQ-token window of every file
        tuple(row)
        for p, n in sizes.items()
        for row in np.fromfile(p, "<u4")[: n // SEQ * SEQ].reshape(-1, SEQ)
    }
    assert rows.shape == (8, SEQ) and all(tuple(row) in instances for row in rows)


def test_a_share_for_some_labels_counts_only_the_others(tmp_path, write_tokens):
    listing, root = write_local_list(tmp_path, write_tokens)
    result = import_mix_list(listing, str(root), tmp_path / "mix.yaml", shares=[("code", 0.25)])
    web, code = result.sources
    assert (web.share, code.share) == (0.75, 0.25)
    assert web.tokens == 18000 and code.tokens is None and code.max_repeat == 2  # by file: one read twice


@pytest.mark.parametrize(
    "lines, line, message",
    [
        (["web,a/{TOKENIZER}/0.npy", "web a/{TOKENIZER}/1.npy"], 2, "expected one 'label,path' pair"),
        (["web,a/0.npy,extra"], 1, "expected one 'label,path' pair"),
        (["# c", ",a/{TOKENIZER}/0.npy"], 2, "empty label"),
        (["web,"], 1, "empty path"),
        (["web,a/{TOKENIZER}/{VERSION}/0.npy"], 1, r"uses \{VERSION\}; only \{TOKENIZER\} is known"),
        (["web,a/0.npy", "", "code,a/0.npy"], 3, "under label 'code' here and under 'web' at line 1"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, lines, line, message):
    listing = tmp_path / "bad.txt"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(MixListError, match=rf"bad.txt:{line}: .*{message}"):
        import_mix_list(listing, str(tmp_path), tmp_path / "mix.yaml", sizes=False)
    assert not (tmp_path / "mix.yaml").exists()


def test_bad_shares_and_missing_files(tmp_path, write_tokens):
    listing, root = write_local_list(tmp_path, write_tokens)
    out = tmp_path / "mix.yaml"
    with pytest.raises(MixListError, match="has no label 'math'"):
        import_mix_list(listing, str(root), out, shares=[("math", 0.5)])
    with pytest.raises(MixListError, match="given twice, as 0.5 and 0.25"):
        import_mix_list(listing, str(root), out, shares=[("web", 0.5), ("web", 0.25)])
    with pytest.raises(MixListError, match="not for code; give one for every label"):
        import_mix_list(listing, str(root), out, shares=[("web", 0.5)], sizes=False)
    with pytest.raises(MixListError, match="sum to 1, leaving nothing for code"):
        import_mix_list(listing, str(root), out, shares=[("web", 1.0)])
    with pytest.raises(MixListError, match="shares sum to 0.9"):
        import_mix_list(listing, str(root), out, shares=[("web", 0.5), ("code", 0.4)])
    (root / "code" / TOKENIZER / "part-00001.npy").unlink()
    with pytest.raises(MixListError, match=r"local.txt:7 \(code\): .*part-00001.npy"):
        import_mix_list(listing, str(root), out)
    assert not out.exists()
    with pytest.raises(ValueError, match="LABEL=FRACTION"):
        parse_share("web=1.5")
    assert parse_share("a=b=0.5") == ("a=b", 0.5)


def test_cli_imports_then_shows_the_mix(tmp_path, write_tokens, capsys):
    listing, root = write_local_list(tmp_path, write_tokens)
    out = tmp_path / "mix.yaml"
    assert main(["mix", "import", str(listing), "--root", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 lines = 6 entries + 2 comments or blank; 6 entries = 5 files + 1 repeats of a file" in printed
    assert yaml.safe_load(out.read_text())["variables"] == {"MIX_ROOT": str(root)}
    assert main(["mix", "show", str(out), "--seq-len", str(SEQ)]) == 0
    assert "web" in capsys.readouterr().out

    listing.write_text("web,a/{TOKENIZER}/0.npy\nweb\n")
    assert main(["mix", "import", str(listing), "--root", str(root), "--out", str(out), "--no-sizes"]) == 4
    assert "local.txt:2: expected one 'label,path' pair" in capsys.readouterr().err
