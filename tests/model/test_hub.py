"""Hub ids wherever a model path is accepted: a local HF cache laid out as huggingface_hub writes it,
looked up offline (HF_HUB_OFFLINE=1) by `olmo2 eval`, `generate`, `convert`, `init.checkpoint` and a
post-training stage; revisions pin; a missing model is one clear line with exit status 4."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from olmo2.cli import main
from olmo2.model import hub
from olmo2.model.checkpoint import CheckpointError, read_state_dict, resolve_model_dir, save_model
from olmo2.model.config import ModelConfig
from olmo2.model.convert import convert_checkpoint
from olmo2.model.transformer import build_model
from olmo2.train.monitor import read_metrics

huggingface_hub = pytest.importorskip("huggingface_hub")

REPO = "testorg/tiny-olmo2"  # dolma2 vocabulary: eval, generate, convert
TRAIN_REPO = "testorg/tiny-train"  # the shape of the tests' training config (tests/conftest.py)
TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, mlp_hidden=32)
TRAIN_MODEL = ModelConfig(
    d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128, vocab_size=384,
    eos_token_id=382, pad_token_id=383, max_seq_len=64,
)  # fmt: skip


def add_to_hub_cache(cache: Path, repo_id: str, model_dir: Path, refs: list[str]) -> str:
    """Lay ``model_dir`` out as huggingface_hub caches a download: ``blobs/`` named by content hash
    (sha256 for LFS weights, the git blob sha1 for the rest), ``snapshots/<commit>/`` of relative
    symlinks to them, ``refs/<name>`` holding the commit. Returns the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    files = {f.name: f.read_bytes() for f in sorted(model_dir.iterdir())}
    commit = hashlib.sha1(b"".join(name.encode() + data for name, data in files.items())).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        if name.endswith(".safetensors"):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if not (repo / "blobs" / blob).exists():
            (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(repo / "blobs" / blob, snapshot))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """``(cache, {(repo, revision): (commit, local export)})``: two revisions (``main``, ``v2``) of REPO,
    exported by ``convert to-hf`` (tokenizer files included), and of TRAIN_REPO."""
    root = tmp_path_factory.mktemp("hub")
    cache, exports = root / "hf_home" / "hub", {}
    for repo, cfg in ((REPO, TINY), (TRAIN_REPO, TRAIN_MODEL)):
        for revision, seed in (("main", 0), ("v2", 1)):
            raw = save_model(build_model(cfg, seed=seed), root / f"{repo}-{revision}-raw")
            export = convert_checkpoint(raw, root / f"{repo}-{revision}", with_tokenizer=repo == REPO)
            exports[repo, revision] = (add_to_hub_cache(cache, repo, export, [revision]), export)
    return cache, exports


@pytest.fixture
def offline(hub_cache, tmp_path, monkeypatch):
    """HF_HOME/HF_HUB_CACHE at the test cache, HF_HUB_OFFLINE=1, and a working directory without a
    ``testorg/`` folder (a local path would win)."""
    cache, exports = hub_cache
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache, exports


def test_the_cache_is_what_huggingface_hub_finds(offline):
    cache, exports = offline
    for revision in ("main", "v2"):
        commit, export = exports[REPO, revision]
        found = huggingface_hub.snapshot_download(
            REPO, revision=revision, cache_dir=cache, local_files_only=True
        )
        assert Path(found) == cache / "models--testorg--tiny-olmo2" / "snapshots" / commit
        assert sorted(p.name for p in Path(found).iterdir()) == sorted(p.name for p in export.iterdir())
        assert resolve_model_dir(REPO, None if revision == "main" else revision) == Path(found)
        assert resolve_model_dir(REPO, commit) == Path(found)  # a commit pins too
        weights = read_state_dict(REPO if revision == "main" else Path(found))
        assert all(torch.equal(weights[k], v) for k, v in read_state_dict(export).items())


def _bpb(results: dict) -> list[float]:
    return [d["bits_per_byte"] for d in results["tasks"]["naturalqs:bpb"]["per_doc"]]


def test_eval_a_hub_id_and_a_revision(offline, tmp_path, capsys):
    _, exports = offline
    runs = {}
    for name, argv in {
        "hub": [REPO],
        "hub-v2": [REPO, "--revision", "v2"],
        "local-v2": [str(exports[REPO, "v2"][1])],
    }.items():
        out = tmp_path / f"{name}.json"
        args = ["eval", *argv, "--tasks", "naturalqs:bpb", "--limit", "3", "--per-doc", "--quiet"]
        assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
        runs[name] = json.loads(out.read_text())
    assert runs["hub"]["model"] == REPO and runs["hub-v2"]["revision"] == "v2"
    assert _bpb(runs["hub-v2"]) == _bpb(runs["local-v2"])  # the revision is the v2 weights
    assert all(a != b for a, b in zip(_bpb(runs["hub"]), _bpb(runs["hub-v2"]), strict=True))


def test_a_missing_id_or_revision_is_one_line_with_exit_4(offline, capsys):
    cache, _ = offline
    assert main(["eval", "testorg/missing", "--tasks", "naturalqs:bpb", "--limit", "1"]) == 4
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("olmo2: error: Hub model testorg/missing (revision main)")
    assert str(cache) in err and "HF_HUB_OFFLINE" in err
    assert main(["generate", REPO, "--revision", "nope", "--prompt", "a", "--device", "cpu"]) == 4
    assert "(revision nope) is not a local path and not in the Hugging Face cache" in capsys.readouterr().err
    assert main(["eval", "not/a/hub/id"]) == 4  # two slashes: a local path only
    assert "checkpoint not found: not/a/hub/id" in capsys.readouterr().err


def test_a_local_path_wins_and_takes_no_revision(offline, tmp_path):
    _, exports = offline
    local = tmp_path / REPO
    save_model(build_model(TINY, seed=7), local)
    assert resolve_model_dir(REPO) == Path(REPO)
    with pytest.raises(
        CheckpointError, match=r"testorg/tiny-olmo2 is a local path; a revision \(v2\) pins Hub"
    ):
        resolve_model_dir(REPO, "v2")


def test_generate_and_convert_from_a_hub_id(offline, tmp_path, capsys):
    _, exports = offline
    prompt = ["--prompt", "The capital of France is", "--max-new-tokens", "4", "--device", "cpu"]
    assert main(["generate", REPO, "--revision", "v2", *prompt]) == 0
    from_hub = capsys.readouterr().out
    assert main(["generate", str(exports[REPO, "v2"][1]), *prompt]) == 0
    assert from_hub == capsys.readouterr().out
    assert main(["convert", "from-hf", REPO, str(tmp_path / "imported"), "--revision", "v2"]) == 0
    imported, original = read_state_dict(tmp_path / "imported"), read_state_dict(exports[REPO, "v2"][1])
    assert imported.keys() == original.keys() and all(torch.equal(imported[k], original[k]) for k in original)


def test_init_checkpoint_names_a_hub_id(offline, make_train_config, tmp_path, capsys):
    """Step 1's loss depends on the initial weights: a Hub id gives that of its local export, and
    ``init.revision`` that of the other revision."""
    _, exports = offline
    config = make_train_config(schedule={"warmup_steps": 0}, checkpoint={"save_every": 1})
    losses = {}
    for name, init in {
        "hub": [f"init.checkpoint={TRAIN_REPO}"],
        "local": [f"init.checkpoint={exports[TRAIN_REPO, 'main'][1]}"],
        "hub-v2": [f"init.checkpoint={TRAIN_REPO}", "init.revision=v2"],
    }.items():
        folder = tmp_path / name
        assert main(["train", str(config), f"run.folder={folder}", "run.max_steps=1", *init]) == 0
        losses[name] = read_metrics(folder)[0]["loss"]
    assert losses["hub"] == losses["local"] != losses["hub-v2"]
    local_step = f"init.checkpoint={tmp_path / 'hub' / 'step1'}"  # a training checkpoint takes no revision
    assert main(["train", str(config), f"run.folder={tmp_path}/x", local_step, "init.revision=v2"]) == 4
    assert main(["train", str(config), f"run.folder={tmp_path}/y", "init.revision=v2"]) == 4
    err = capsys.readouterr().err
    assert "init.checkpoint: " in err and "is a local path; a revision (v2) pins Hub ids only" in err
    assert "init.revision (v2) needs init.checkpoint" in err


def test_a_posttrain_stage_starts_from_a_hub_id(offline, tmp_path):
    from olmo2.posttrain.sft import load_sft_config, train_sft

    chats = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    ] * 4
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    cfg = {
        "model": REPO, "revision": "v2", "data": str(tmp_path / "sft.jsonl"), "batch_size": 2,
        "micro_batch_size": 2, "max_seq_len": 32, "run": {"folder": str(tmp_path / "sft"), "max_steps": 1},
        "runtime": {"precision": "fp32", "device": "cpu"},
    }  # fmt: skip
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    train_sft(load_sft_config(tmp_path / "sft.yaml"))
    saved = yaml.safe_load((tmp_path / "sft" / "config.yaml").read_text())
    assert (saved["model"], saved["revision"]) == (REPO, "v2")  # the id, not the cache path
    with pytest.raises(ValueError, match=r"model: Hub model testorg/missing \(revision main\)"):
        train_sft(load_sft_config(tmp_path / "sft.yaml", ["model=testorg/missing", "revision=null"]))


def test_cached_models_need_no_network_and_a_download_failure_is_named(hub_cache, monkeypatch, tmp_path):
    """Online (no HF_HUB_OFFLINE): a cached revision is served without a network call; an uncached one
    is downloaded, and a Hub that cannot be reached is one clear error."""
    cache, exports = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    real, calls = huggingface_hub.snapshot_download, []

    def no_network(repo_id, **kwargs):
        calls.append((repo_id, kwargs["local_files_only"], kwargs["allow_patterns"]))
        if not kwargs["local_files_only"]:
            raise huggingface_hub.utils.LocalEntryNotFoundError("connection error")
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    assert resolve_model_dir(REPO, "v2").parent.name == "snapshots"
    assert calls == [(REPO, True, hub.MODEL_FILES)]
    with pytest.raises(
        CheckpointError,
        match=r"testorg/other \(revision main\) is not a local path, not in the .* and the Hub cannot be reached",
    ):
        resolve_model_dir("testorg/other")
    assert calls[1:] == [("testorg/other", True, hub.MODEL_FILES), ("testorg/other", False, hub.MODEL_FILES)]


@pytest.mark.parametrize(
    ("name", "is_id"),
    [("allenai/OLMo-2-0425-1B", True), ("org/name.v2", True), ("runs/x/model", False), ("/abs/x", False),
     ("./x", False), ("x", False), ("org/../x", False), ("org/a--b", False)],
)  # fmt: skip
def test_hub_id_shape(name, is_id):
    assert hub.is_hub_id(name) is is_id
