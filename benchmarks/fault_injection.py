"""Fault injection: the faults of issue 13, each done to a real ``olmo2`` command as a user would meet
it, and what came out (exit status, the first line of stderr, what is left on disk).

Every case runs ``python -m olmo2.cli ...`` in a subprocess on a tiny model and random token files in
a temporary folder (deleted afterwards), on the CPU, and checks the outcome the docs promise:

    python benchmarks/fault_injection.py              # prints a table: case | expected | seen | ok
    python benchmarks/fault_injection.py --json out.json

Exit statuses (``olmo2 --help``): 0 ok, 2 usage, 3 run halted, 4 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

VOCAB = 384  # the training cases' model; the eval/generate cases use dolma2's vocabulary
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Outcome:
    case: str
    expected: str
    seen: str
    ok: bool
    seconds: float = 0.0


def olmo2(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "olmo2.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=ENV, **popen,
    )  # fmt: skip


def first_line(stderr: str) -> str:
    """The ``olmo2:`` line (logs come before it), else the last line; shortened for the table."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("olmo2:")]
    line = (errors or lines or ["(nothing)"])[0 if errors else -1]
    return line if len(line) <= 110 else line[:107] + "..."


def seen(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}: {first_line(result.stderr)}"


class Workspace:
    """A tiny pretraining setup (random token files, a mix, a 2-layer model) and a tiny dolma2 model."""

    def __init__(self, root: Path):
        self.root = root
        rng = np.random.default_rng(0)
        data = root / "data"
        data.mkdir()
        for i in range(2):
            tokens = rng.integers(0, VOCAB - 2, size=20_000).astype("<u4")
            tokens[::50] = VOCAB - 2
            tokens.tofile(data / f"part-{i}.npy")
        (root / "mix.yaml").write_text(
            yaml.safe_dump({"name": "faults", "sources": [{"name": "all", "paths": [str(data / "*.npy")]}]})
        )

    def train_config(self, name: str, **sections) -> Path:
        cfg = {
            "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128, "vocab_size": VOCAB,
                      "eos_token_id": VOCAB - 2, "pad_token_id": VOCAB - 1, "max_seq_len": 64},
            "data": {"mix": str(self.root / "mix.yaml"), "seq_len": 32, "global_batch_size": 8,
                     "micro_batch_size": 4, "seed": 7},
            "optim": {"lr": 3e-3},
            "schedule": {"warmup_steps": 1},
            "run": {"folder": str(self.root / name), "max_steps": 4},
            "runtime": {"precision": "fp32", "device": "cpu"},
            "checkpoint": {"save_every": 2, "keep_last": 0, "export_hf": False},
        }  # fmt: skip
        for section, values in sections.items():
            cfg[section].update(values)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def dolma2_model(self) -> Path:
        """A random 1-layer model with the dolma2 vocabulary (what eval and generate tokenize for)."""
        path = self.root / "model"
        if not path.is_dir():
            spec = self.root / "model.yaml"
            spec.write_text(yaml.safe_dump({"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64,
                                            "max_seq_len": 128}))  # fmt: skip
            result = olmo2("model", "init", spec, path)
            assert result.returncode == 0, result.stderr
        return path


def start_training(ws: Workspace, name: str) -> subprocess.Popen:
    """A long ``olmo2 train`` in the background, returned once it has logged its first step."""
    config = ws.train_config(name, run={"max_steps": 400})
    proc = subprocess.Popen(
        [sys.executable, "-m", "olmo2.cli", "train", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    metrics = ws.root / name / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.stat().st_size):
        time.sleep(0.1)
    return proc


def concurrent_runs(ws: Workspace) -> Outcome:
    proc = start_training(ws, "shared")
    config_before = (ws.root / "shared" / "config.yaml").read_bytes()
    second = olmo2(
        "train", ws.train_config("shared-2", run={"folder": str(ws.root / "shared")}), "optim.lr=1e-3"
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    intact = (ws.root / "shared" / "config.yaml").read_bytes() == config_before
    return Outcome(
        "two `olmo2 train` into one run folder",
        "the second exits 4 naming the holder; the first's files untouched",
        f"second {seen(second)}; first's config.yaml {'intact' if intact else 'REPLACED'}; "
        f"first then exit {proc.returncode} on SIGINT",
        second.returncode == 4
        and "in use by another run" in second.stderr
        and intact
        and proc.returncode == 130,
    )


def infinite_lr(ws: Workspace) -> Outcome:
    result = olmo2("train", ws.train_config("inf"), "optim.lr=inf")
    return Outcome(
        "optim.lr=inf",
        "exit 4 at load, naming optim.lr; no run folder",
        seen(result),
        result.returncode == 4 and "optim.lr" in result.stderr and not (ws.root / "inf").exists(),
    )


def absurd_lr(ws: Workspace) -> Outcome:
    result = olmo2("train", ws.train_config("absurd", checkpoint={"save_every": 1}), "optim.lr=1e30")
    run = ws.root / "absurd"
    steps = sorted(p.name for p in run.glob("step*"))

    def refuse(constant):
        raise ValueError(constant)

    strict = all(
        json.loads(line, parse_constant=refuse) is not None for line in (run / "metrics.jsonl").open()
    )
    return Outcome(
        "optim.lr=1e30 (finite, absurd)",
        "exit 3 (halted), no checkpoint of the broken weights; metrics.jsonl strict JSON",
        f"{seen(result)}; checkpoints {steps}; metrics.jsonl strict JSON: {strict}",
        result.returncode == 3 and "step4" not in steps and strict,
    )


def damaged_latest(ws: Workspace, damage: str) -> Outcome:
    name = "damaged-" + damage.split()[0]
    config = ws.train_config(name)
    assert olmo2("train", config).returncode == 0
    step4 = ws.root / name / "step4"
    if damage == "random bytes in a shard":
        shard = sorted((step4 / "train").glob("*.distcp"))[0]
        data = bytearray(shard.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 256] = os.urandom(256)
        shard.write_bytes(bytes(data))
    else:
        os.truncate(step4 / "state.json", 10)
    result = olmo2("train", config, "run.max_steps=6")
    resumed = "resumed from" in result.stderr and f"{ws.root / name / 'step2'}" in result.stderr
    kept = any(p.name.startswith("step4.damaged") for p in (ws.root / name).iterdir())
    return Outcome(
        f"{damage} of the latest checkpoint",
        "named, skipped for the previous checkpoint (kept, not deleted); exit 0",
        f"exit {result.returncode}; resumed from step2: {resumed}; damaged one kept: {kept}",
        result.returncode == 0 and resumed and kept,
    )


def refused_resume(ws: Workspace) -> Outcome:
    config = ws.train_config("refused")
    assert olmo2("train", config, "run.max_steps=2").returncode == 0
    before = (ws.root / "refused" / "config.yaml").read_bytes()
    result = olmo2("train", config, "model.d_model=32", "model.n_heads=2")
    intact = (ws.root / "refused" / "config.yaml").read_bytes() == before
    return Outcome(
        "resume with another model's config",
        "exit 4 naming the difference; config.yaml as it was",
        f"{seen(result)}; config.yaml unchanged: {intact}",
        result.returncode == 4 and "model.d_model" in result.stderr and intact,
    )


def interrupted(ws: Workspace) -> Outcome:
    proc = start_training(ws, "interrupted")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return Outcome(
        "Ctrl-C during training",
        "exit 130, one line, no traceback",
        f"exit {proc.returncode}: {first_line(err)}",
        proc.returncode == 130 and "Traceback" not in err,
    )


def truncated_weights(ws: Workspace) -> Outcome:
    model = ws.root / "truncated"
    shutil.copytree(ws.dolma2_model(), model)
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    result = olmo2("eval", model, "--tasks", "arc_easy:rc", "--limit", "2")
    return Outcome(
        "truncated model.safetensors",
        "exit 4, one line naming the file",
        seen(result),
        result.returncode == 4 and str(weights) in result.stderr and "Traceback" not in result.stderr,
    )


def out_is_a_directory(ws: Workspace) -> Outcome:
    model = ws.dolma2_model()
    start = time.perf_counter()
    result = olmo2("eval", model, "--tasks", "arc_easy:rc", "--limit", "2", "--out", ws.root)
    return Outcome(
        "eval --out is a directory",
        "exit 4 before scoring",
        f"{seen(result)} ({time.perf_counter() - start:.1f} s)",
        result.returncode == 4 and "Traceback" not in result.stderr,
    )


def no_cuda(ws: Workspace) -> Outcome:
    if torch.cuda.is_available():
        return Outcome("--device cuda without CUDA", "exit 4", "skipped: this machine has CUDA", True)
    result = olmo2("eval", ws.dolma2_model(), "--tasks", "arc_easy:rc", "--limit", "2", "--device", "cuda")
    return Outcome("--device cuda without CUDA", "exit 4, one line", seen(result), result.returncode == 4)


def tokenizer_typo(ws: Workspace) -> Outcome:
    model = ws.dolma2_model()
    start = time.perf_counter()
    result = olmo2("eval", model, "--tasks", "arc_easy:rc", "--limit", "2", "--tokenizer", "./tokenzier.json")
    seconds = time.perf_counter() - start
    return Outcome(
        "a tokenizer path typo",
        "exit 4 at once (no hub retries)",
        f"{seen(result)} ({seconds:.1f} s)",
        result.returncode == 4 and seconds < 30,
    )


def remote_code(ws: Workspace) -> Outcome:
    folder = ws.root / "custom-code"
    folder.mkdir()
    marker = ws.root / "code-ran"
    (folder / "config.json").write_text(
        json.dumps({"model_type": "evil", "architectures": ["EvilForCausalLM"],
                    "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",
                                 "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}})
    )  # fmt: skip
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    result = olmo2("eval", folder, "--tasks", "arc_easy:rc", "--limit", "2", stdin=subprocess.DEVNULL)
    return Outcome(
        "a model folder with custom code (auto_map)",
        "refused (exit 4), no prompt, the code never runs",
        f"{seen(result)}; code ran: {marker.exists()}",
        result.returncode == 4 and not marker.exists(),
    )


def huge_generation(ws: Workspace) -> Outcome:
    result = olmo2(
        "generate", ws.dolma2_model(), "--prompt", "Hi", "--max-new-tokens", "100000000", "--device", "cpu"
    )
    return Outcome(
        "generate --max-new-tokens 100000000",
        "exit 4 before the KV cache is allocated",
        seen(result),
        result.returncode == 4,
    )


def zero_batch(ws: Workspace) -> Outcome:
    result = olmo2("eval", ws.dolma2_model(), "--batch-size", "0")
    return Outcome("eval --batch-size 0", "exit 2 (usage)", seen(result), result.returncode == 2)


def edited_input(ws: Workspace) -> Outcome:
    docs = ws.root / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": "the cat sat on the mat"}) + "\n")
    out = ws.root / "tokens"
    assert olmo2("tokenize", docs, "--out", out, "--workers", "1", "--no-progress").returncode == 0
    before = b"".join(p.read_bytes() for p in sorted(out.glob("part-*.npy")))
    stat = docs.stat()
    docs.write_text(json.dumps({"id": "a", "text": "the dog sat on the mat"}) + "\n")  # same size
    os.utime(docs, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    result = olmo2("tokenize", docs, "--out", out, "--workers", "1", "--no-progress")
    after = b"".join(p.read_bytes() for p in sorted(out.glob("part-*.npy")))
    return Outcome(
        "tokenize again after an edit of the same size and mtime",
        "re-tokenized (new tokens), exit 0",
        f"exit {result.returncode}; tokens changed: {before != after}",
        result.returncode == 0 and before != after,
    )


CASES: list[tuple[str, Callable[[Workspace], Outcome]]] = [
    ("concurrent", concurrent_runs),
    ("inf-lr", infinite_lr),
    ("absurd-lr", absurd_lr),
    ("random-bytes", lambda ws: damaged_latest(ws, "random bytes in a shard")),
    ("truncated-state", lambda ws: damaged_latest(ws, "truncated state.json")),
    ("refused-resume", refused_resume),
    ("sigint", interrupted),
    ("truncated-weights", truncated_weights),
    ("out-dir", out_is_a_directory),
    ("no-cuda", no_cuda),
    ("tokenizer-typo", tokenizer_typo),
    ("remote-code", remote_code),
    ("huge-generation", huge_generation),
    ("zero-batch", zero_batch),
    ("edited-input", edited_input),
]


def run_cases(names: list[str]) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="olmo2-faults-") as tmp:
        ws = Workspace(Path(tmp))
        for name, case in CASES:
            if names and name not in names:
                continue
            start = time.perf_counter()
            try:
                outcome = case(ws)
            except Exception as e:  # the harness itself failed: report it as a failed case
                outcome = Outcome(name, "(the case to run)", f"harness error: {e!r}"[:200], False)
            outcome.seconds = time.perf_counter() - start
            print(
                f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.case}: {outcome.seen}",
                file=sys.stderr,
                flush=True,
            )
            outcomes.append(outcome)
    return outcomes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="*", help=f"run only these ({', '.join(n for n, _ in CASES)})")
    p.add_argument("--json", help="also write the outcomes here")
    args = p.parse_args()
    outcomes = run_cases(args.cases)
    print("| fault | expected | seen | ok |\n|---|---|---|---|")
    for o in outcomes:
        print(f"| {o.case} | {o.expected} | {o.seen.replace('|', '/')} | {'yes' if o.ok else 'NO'} |")
    print(f"\n{sum(o.ok for o in outcomes)} of {len(outcomes)} as expected")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
