"""The training loop on CPU: accumulation invariance, checkpoints, exact resume, stability."""

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from olmo2.cli import main
from olmo2.data.token_files import count_tokens, write_json_atomic
from olmo2.folder_lock import FolderLocked, hold_folder
from olmo2.model.checkpoint import load_model, read_state_dict
from olmo2.train.config import TrainConfig, load_train_config
from olmo2.train.trainer import TrainingHalted, train


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_logs_saves_and_learns(make_train_config, tmp_path):
    cfg = load_train_config(make_train_config(), ["run.max_steps=12", "run.eval_every=6"])
    summary = train(cfg)
    run = tmp_path / "run"
    records = _metrics(run)
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "z_loss", "grad_norm", "lr", "tokens_per_sec", "mfu", "batch_hash"):
        assert key in records[0]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert "val_loss" in records[5] and "val_loss" in records[11]
    assert sorted(p.name for p in run.glob("step*")) == ["step12", "step8"]  # keep_last 2
    assert (run / "step12" / "COMPLETE").is_file() and (run / "config.yaml").is_file()
    assert summary["step"] == 12
    # The checkpoint's model part is an HF-loadable model directory.
    assert load_model(run / "step12").config.d_model == 64


def test_accumulation_does_not_change_loss_or_weights(make_train_config, tmp_path):
    runs = {}
    for micro in (8, 2):
        cfg = load_train_config(
            make_train_config(),
            [
                f"data.micro_batch_size={micro}",
                f"run.folder={tmp_path}/mb{micro}",
                "run.max_steps=3",
            ],
        )
        train(cfg)
        runs[micro] = (_metrics(tmp_path / f"mb{micro}"), read_state_dict(tmp_path / f"mb{micro}/step3"))
    (m8, w8), (m2, w2) = runs[8], runs[2]
    for a, b in zip(m8, m2, strict=True):
        assert a["batch_hash"] == b["batch_hash"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for key in w8:
        torch.testing.assert_close(w8[key], w2[key], rtol=1e-4, atol=2e-5)  # 3 AdamW steps of lr 3e-3


def _olmo2(*args, **kwargs):
    cmd = [sys.executable, "-m", "olmo2.cli", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_then_rerun_reproduces_the_uninterrupted_run(make_train_config, tmp_path, capfd):
    """The killed run is an ``olmo2 train`` process; the reference and the rerun run in this one."""
    config = make_train_config(checkpoint={"save_every": 2, "keep_last": 0})
    steps = ["run.max_steps=10"]
    train(load_train_config(config, [*steps, f"run.folder={tmp_path / 'ref'}"]))

    run = tmp_path / "killed"
    proc = _olmo2("train", config, *steps, f"run.folder={run}")
    deadline = time.time() + 300
    while time.time() < deadline:  # kill mid-run, after the step-4 checkpoint began
        if (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert done < 10, "the run finished before it could be killed"
    capfd.readouterr()
    train(load_train_config(config, [*steps, f"run.folder={run}"]))
    assert "resumed from" in capfd.readouterr().err
    a, b = _metrics(tmp_path / "ref"), _metrics(run)
    assert [(r["step"], r["loss"], r["batch_hash"]) for r in a] == [
        (r["step"], r["loss"], r["batch_hash"]) for r in b
    ]
    wa, wb = read_state_dict(tmp_path / "ref/step10"), read_state_dict(run / "step10")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(run.glob(".step*.tmp"))


@pytest.mark.parametrize("async_save", [False, True])
def test_non_finite_steps_are_skipped_then_the_run_halts(
    make_train_config, tmp_path, monkeypatch, async_save
):
    """With async saves too, the message names the last checkpoint (its write completes first)."""
    overrides = ["run.max_steps=12", "checkpoint.save_every=3", f"checkpoint.async_save={async_save}"]
    cfg = load_train_config(make_train_config(), overrides)
    from olmo2.train.trainer import LMTrainModule

    real_step = LMTrainModule.train_step

    def poisoned(module, *args, **kwargs):
        if poisoned.calls >= 4:  # from step 5 on, the weights are NaN
            with torch.no_grad():
                next(module.model.parameters()).fill_(float("nan"))
        poisoned.calls += 1
        return real_step(module, *args, **kwargs)

    poisoned.calls = 0
    monkeypatch.setattr(LMTrainModule, "train_step", poisoned)
    with pytest.raises(
        TrainingHalted, match="stopped at step 7: 3 consecutive steps had a non-finite"
    ) as err:
        train(cfg)
    assert "run/step3." in str(err.value) and "Rerun the same command" in str(err.value)
    records = _metrics(tmp_path / "run")
    assert [r["skipped"] for r in records] == [False] * 4 + [True] * 3
    weights = read_state_dict(tmp_path / "run/step3")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_stage2_init_from_stage1_checkpoint(make_train_config, tmp_path):
    train(load_train_config(make_train_config(), ["run.max_steps=4"]))
    stage1 = tmp_path / "run" / "step4"
    anneal = [
        "run.max_steps=4",
        "schedule.name=linear",
        "schedule.warmup_steps=0",
        "schedule.alpha_f=0.0",
        "data.seed=42",
    ]
    for name, source in (("from_train", stage1), ("from_hf", stage1 / "model")):
        overrides = [f"init.checkpoint={source}", f"run.folder={tmp_path}/{name}", *anneal]
        train(load_train_config(make_train_config(), overrides))
    a, b = _metrics(tmp_path / "from_train"), _metrics(tmp_path / "from_hf")
    assert a[-1]["lr"] == 0.0 and a[0]["lr"] == pytest.approx(3e-3 * 0.75)
    # Step 1's loss is computed before any update: it depends only on the loaded weights.
    assert a[0]["loss"] == b[0]["loss"]
    assert a[0]["loss"] < _metrics(tmp_path / "run")[0]["loss"] - 0.1
    # The AdamW moments came along from the training checkpoint only, so the runs then differ.
    assert a[1]["loss"] != b[1]["loss"]


def test_bad_config_fails_before_work(make_train_config, capsys, tmp_path):
    path = make_train_config()
    assert main(["train", str(path), "schedule.warmup_steps=8"]) == 4
    assert (
        "schedule.warmup_steps (8) is not shorter than the run (run.max_steps 8)" in capsys.readouterr().err
    )
    assert main(["train", str(path), "data.micro_batch_size=3"]) == 4
    assert "not divisible by data.micro_batch_size (3)" in capsys.readouterr().err
    train(load_train_config(path, ["run.max_steps=3", "checkpoint.save_every=3"]))
    assert main(["train", str(path), "model.d_model=32", "run.max_steps=4"]) == 4
    assert (
        "holds a checkpoint of another model (model.d_model: checkpoint 64, config 32)"
        in capsys.readouterr().err
    )
    assert main(["train", str(path), "optim.lrr=1"]) == 4
    assert "unknown key optim.lrr (did you mean optim.lr" in capsys.readouterr().err
    assert main(["train", str(path), "data.mix=/nope.yaml"]) == 4
    assert "/nope.yaml" in capsys.readouterr().err
    assert main(["train", str(path), "runtime.cpu_malloc_mmap_threshold_mib=64"]) == 4
    assert "runtime.cpu_malloc_mmap_threshold_mib must be in [0, 32]" in capsys.readouterr().err


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("export_hf", [True, False], ids=["hf-export", "no-hf-export"])
def test_a_held_or_refused_run_folder_stays_as_it_was(make_train_config, tmp_path, export_hf):
    """A second run while the first holds the folder, and a resume refused for another model, change
    no byte of the first run's files (config.yaml included); the refused run's folder had existed.
    Without the HF export in the checkpoint, the run's config.yaml tells the model."""
    path = make_train_config(checkpoint={"export_hf": export_hf})
    first = ["run.max_steps=3", "checkpoint.save_every=3"]
    train(load_train_config(path, first))
    run = tmp_path / "run"
    before = _files(run)
    assert "config.yaml" in before and "metrics.jsonl" in before and "step3/COMPLETE" in before
    with hold_folder(run):  # the first run, still going (this process holds the lock by another fd)
        with pytest.raises(FolderLocked, match=rf"{run} is in use by another run \(pid {os.getpid()} on "):
            train(load_train_config(path, ["run.max_steps=4"]))
        assert _files(run).keys() == {*before, ".olmo2.lock"}
    with pytest.raises(
        ValueError, match=r"holds a checkpoint of another model \(model.d_model: checkpoint 64"
    ):
        train(load_train_config(path, ["model.d_model=32", "run.max_steps=4"]))
    assert _files(run) == before


def _tokenized_config(make_train_config, tmp_path, directory: str = "", **changed) -> TrainConfig:
    """Two sources (``train``, ``code``) and held-out ``val``, each with the manifest ``olmo2 tokenize``
    writes for the config's model; ``directory``'s manifest gets the ``changed`` keys."""
    cfg = load_train_config(make_train_config(), ["run.max_steps=3"])
    data = tmp_path / "data"
    shutil.copytree(data / "train", data / "code")
    sources = [{"name": name, "paths": [str(data / name / "*.npy")]} for name in ("train", "code")]
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"name": "two", "sources": sources}))
    for name in ("train", "code", "val"):
        keys = {
            "eos_token_id": cfg.model.eos_token_id,
            "sha256": "a" * 64,
            "vocab_size": cfg.model.vocab_size,
        }
        keys |= changed if name == directory else {}
        files = [{"name": p.name, "tokens": count_tokens(p)} for p in sorted((data / name).glob("*.npy"))]
        manifest = {
            "format": "olmo2.token-files",
            "eos_token_id": keys["eos_token_id"],
            "tokenizer": {"sha256": keys["sha256"], "vocab_size": keys["vocab_size"]},
            "files": files,
        }
        write_json_atomic(data / name / "manifest.json", manifest)
    return cfg


def test_keys_of_the_trainer_section_name_their_new_place(make_train_config, capsys):
    config = make_train_config()
    assert main(["train", str(config), "trainer.max_steps=3", "trainer.precision=fp32"]) == 4
    err = capsys.readouterr().err
    assert (
        "trainer.max_steps is now run.max_steps" in err
        and "trainer.precision is now runtime.precision" in err
    )
    assert not (config.parent / "run").exists()


@pytest.mark.parametrize(
    ("directory", "changed", "message"),
    [
        (
            "train",
            {"eos_token_id": 0},
            r"train/manifest\.json: eos_token_id is 0 but the model's eos_token_id is 382",
        ),
        ("train", {"vocab_size": 1000}, r"train/manifest\.json: tokenizer\.vocab_size is 1000 but .* is 384"),
        (
            "code",
            {"sha256": "b" * 64},
            r"code/manifest\.json: tokenizer\.sha256 is b{64} but \S*train/manifest",
        ),
        (
            "val",
            {"sha256": "b" * 64},
            r"val/manifest\.json: tokenizer\.sha256 is b{64} but \S*train/manifest",
        ),
    ],
)
def test_a_manifest_for_another_model_fails_before_step_1(
    make_train_config, tmp_path, directory, changed, message
):
    cfg = _tokenized_config(make_train_config, tmp_path, directory, **changed)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()  # the refused start removed the folder it had made


def test_matching_manifests_and_raw_token_files_train(make_train_config, tmp_path, capsys):
    raw = load_train_config(make_train_config(), ["run.max_steps=3", f"run.folder={tmp_path}/raw"])
    assert train(raw)["step"] == 3
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("token files:")]
    assert notes == [
        "token files: no manifest in their 2 directories (raw Dolma/OLMo files?), so their "
        "tokenizer is not checked against the model"
    ]
    assert train(_tokenized_config(make_train_config, tmp_path))["step"] == 3
    assert "token files: the manifests of 3 of 3 directories match the model" in capsys.readouterr().err


@pytest.mark.parametrize("mib", [0, 8])
def test_cpu_run_sets_the_malloc_threshold_unless_zero(make_train_config, monkeypatch, mib):
    calls = []
    monkeypatch.setattr("olmo2.train.trainer.set_malloc_mmap_threshold", calls.append)
    overrides = [
        "run.max_steps=3",
        "checkpoint.save_every=3",
        f"runtime.cpu_malloc_mmap_threshold_mib={mib}",
    ]
    train(load_train_config(make_train_config(), overrides))
    assert calls == ([mib] if mib else [])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_mmap_threshold_is_set_on_glibc():
    from olmo2.train.distributed import set_malloc_mmap_threshold

    assert set_malloc_mmap_threshold(4)


def test_plot_writes_png(make_train_config, tmp_path, capsys):
    train(load_train_config(make_train_config(), ["run.max_steps=3"]))
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000


@pytest.mark.slow  # a torchrun launch of 2 ranks: 10-30 s on 2 busy cores
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_a_held_folder_fails_every_rank_under_torchrun(make_train_config, tmp_path, torchrun):
    """Rank 0 alone takes the lock and shares its verdict: every rank exits with the refusal, none
    waits for rank 0 in a collective."""
    run = tmp_path / "run"
    run.mkdir()
    cmd = [*torchrun(2), "-m", "olmo2.cli", "train", str(make_train_config()), f"run.folder={run}"]
    with hold_folder(run):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "rank 0: " in result.stderr and result.stderr.count("is in use by another run") >= 2
    assert sorted(p.name for p in run.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_match_one(make_train_config, tmp_path, torchrun_train, assert_runs_match, parallel):
    """ddp also saves asynchronously (its Gloo group for DCP runs beside the training collectives).
    HSDP's meshes: tests/train/test_parallel_variants.py. fsdp's is slow-marked (CI time): by default
    ``test_hsdp_two_processes_match_one[1x2]`` shards the same way over 2 ranks (per block, then the
    root; steps and weights compared) and ``test_stage1_under_torchrun_matches_the_in_process_run``
    trains with ``parallel.strategy`` fsdp on 2 ranks (steps and held-out loss compared)."""
    config = make_train_config()
    single = tmp_path / "single"
    train(load_train_config(config, [f"run.folder={single}", "run.max_steps=4"]))
    multi = torchrun_train(
        config,
        tmp_path / parallel,
        "run.max_steps=4",
        f"parallel.strategy={parallel}",
        f"checkpoint.async_save={parallel == 'ddp'}",
    )
    assert_runs_match(single, multi, step=4)  # weights: 4 AdamW steps of lr 3e-3


def test_peak_flops_is_the_best_timed_matmul(monkeypatch):
    """Other load only slows a matmul down, so the MFU denominator uses the fastest of the repeats."""
    import itertools

    from olmo2.train import monitor

    # start/stop pairs of 0.5 s, 0.1 s, 0.3 s; then a clock that keeps going for anyone else
    clock = itertools.chain([0.0, 0.5, 1.0, 1.1, 2.0, 2.3], itertools.count(3.0))
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: next(clock))
    peak = monitor.measure_peak_flops(torch.device("cpu"), torch.float32, size=64, repeats=3)
    assert peak == pytest.approx(2 * 64**3 / 0.1)


def test_precision_and_peak_are_measured_once_per_machine(monkeypatch, tmp_path):
    """The first process measures and keeps the peaks and the ``auto`` choice in the cache directory;
    a later process (here: after clearing the per-process cache) reuses them without a matmul."""
    from olmo2.train import runtime

    calls = []

    def measure(device, dtype, size=2048, repeats=3):
        calls.append((dtype, size))
        return {torch.float32: 1e9, torch.bfloat16: 4e9}[dtype]

    monkeypatch.setenv("OLMO2_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "measure_peak_flops", measure)
    device = torch.device("cpu")
    runtime.choose_precision.cache_clear()
    try:
        assert runtime.choose_precision("auto", device) == (torch.bfloat16, 4e9)
        assert calls == [(torch.bfloat16, 256), (torch.float32, 2048), (torch.bfloat16, 1024)]
        cached = json.loads((tmp_path / "precision.json").read_text())
        ((key, entry),) = cached.items()
        assert key.startswith("cpu: ") and f"torch {torch.__version__}" in key
        assert entry == {"float32": 1e9, "bfloat16": 4e9, "auto": "bfloat16"}
        runtime.choose_precision.cache_clear()  # a fresh process
        calls.clear()
        assert runtime.choose_precision("auto", device) == (torch.bfloat16, 4e9)
        assert runtime.choose_precision("fp32", device) == (torch.float32, 1e9)
        assert calls == []
        (tmp_path / "precision.json").write_text("{not json")  # a damaged cache is measured again
        runtime.choose_precision.cache_clear()
        assert runtime.choose_precision("fp32", device) == (torch.float32, 1e9) and calls
    finally:
        runtime.choose_precision.cache_clear()  # later runs use the real measurement


@pytest.mark.slow
def test_auto_precision_is_the_same_in_ten_fresh_processes(tmp_path):
    """Real measurements: the first process decides, the nine after it read the same answer."""
    code = (
        "import torch; from olmo2.train.runtime import choose_precision; "
        "print(choose_precision('auto', torch.device('cpu'))[0])"
    )
    env = {**os.environ, "OLMO2_CACHE_DIR": str(tmp_path)}
    answers = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(10)
    ]
    assert len(set(answers)) == 1 and answers[0].strip() in ("torch.float32", "torch.bfloat16")


def test_init_from_a_released_style_hf_config_with_the_padded_vocabulary(make_train_config, tmp_path):
    """Released OLMo 2 configs say vocab_size 100352 (the embedding rows), ours keep the tokenizer's
    100278 below it: the same tensors, so the start is allowed; another width is still refused."""
    small_vocab = ["model.vocab_size=300", "model.eos_token_id=0", "model.pad_token_id=1"]
    train(load_train_config(make_train_config(), ["run.max_steps=3", *small_vocab]))
    export = tmp_path / "released"
    shutil.copytree(tmp_path / "run" / "step3" / "model", export)
    hf = json.loads((export / "config.json").read_text())
    assert hf.pop("tokenizer_vocab_size") == 300 and hf["vocab_size"] == 384
    (export / "config.json").write_text(json.dumps(hf))
    start = [f"init.checkpoint={export}", "run.max_steps=3", *small_vocab]
    train(load_train_config(make_train_config(), [*start, f"run.folder={tmp_path}/anneal"]))
    assert len(_metrics(tmp_path / "anneal")) == 3
    with pytest.raises(ValueError, match="model shape differs"):
        train(
            load_train_config(make_train_config(), [*start, "model.d_model=32", f"run.folder={tmp_path}/x"])
        )


def test_a_step_faster_than_the_cached_peak_raises_it(monkeypatch, tmp_path, capsys):
    """A peak measured on a busy machine made the demo's SFT log 'mfu 112%'; a step that beats the
    cached peak proves it low, so the peak becomes the step's rate (in the cache too)."""
    from olmo2.train import runtime

    monkeypatch.setenv("OLMO2_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "measure_peak_flops", lambda device, dtype, size=2048, repeats=3: 1e9)
    device = torch.device("cpu")
    runtime.choose_precision.cache_clear()
    try:
        assert runtime.choose_precision("fp32", device) == (torch.float32, 1e9)
        assert runtime.raise_measured_peak(device, 1e9, 3e9) == 3e9
        ((_, entry),) = json.loads((tmp_path / "precision.json").read_text()).items()
        assert entry["float32"] == 3e9
        assert "was low: a step did 3.0" in capsys.readouterr().err
    finally:
        runtime.choose_precision.cache_clear()
