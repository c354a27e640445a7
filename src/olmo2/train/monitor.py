"""What a run reports: ``metrics.jsonl``, a console line per log step, spikes, throughput and MFU."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from olmo2.model.config import ModelConfig

if TYPE_CHECKING:
    import torch


class MetricsLog:
    """Append-only ``metrics.jsonl``, one object per optimizer step.

    On resume, records past the checkpoint's step (written by the killed run after its last
    checkpoint) are dropped, so the file always reads as one uninterrupted run. ``sinks`` (objects
    with ``write(record)`` and ``close()``, e.g. TensorBoard, W&B) receive every record too.
    """

    def __init__(self, path: Path, resume_step: int = 0, sinks: Sequence = ()):
        self.path, self.sinks = path, list(sinks)
        if path.exists():
            keep = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            tmp.replace(path)
        self._file = open(path, "a")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(strict_json_record(record), allow_nan=False) + "\n")
        self._file.flush()
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        self._file.close()
        for sink in self.sinks:
            sink.close()


NON_FINITE = "non_finite"  # the record key naming the fields written as null, with their value


def strict_json_record(record: dict) -> dict:
    """``record`` with every non-finite number (top level or in a list) as ``null`` and listed under
    ``non_finite`` as ``"nan"``, ``"inf"`` or ``"-inf"``: strict JSON readers (jq, pandas, JavaScript)
    reject the ``NaN``/``Infinity`` that Python's json writes by default."""
    out, flagged = {}, {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key], flagged[key] = None, str(value)
        elif isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            out[key] = [None if isinstance(v, float) and not math.isfinite(v) else v for v in value]
            flagged[key] = [str(v) if isinstance(v, float) and not math.isfinite(v) else None for v in value]
        else:
            out[key] = value
    if flagged:
        out[NON_FINITE] = flagged
    return out


def _restore_non_finite(record: dict) -> dict:
    """Undo ``strict_json_record``: the flagged fields get their float values back."""
    for key, flagged in record.pop(NON_FINITE, {}).items():
        if isinstance(flagged, list):
            record[key] = [
                float(f) if f is not None else v for v, f in zip(record[key], flagged, strict=True)
            ]
        else:
            record[key] = float(flagged)
    return record


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, non-finite values restored as floats."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics here; is {run_dir} a training run folder?")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(_restore_non_finite(json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON record ({e})") from None
    return records


class SpikeDetector:
    """Flags a value above the rolling mean + ``sigmas``·std of the previous ``window`` values."""

    def __init__(self, window: int = 128, sigmas: float = 6.0, min_count: int = 64):
        self.values: deque[float] = deque(maxlen=window)
        self.sigmas, self.min_count = sigmas, min_count

    def check(self, value: float) -> bool:
        spike = False
        if len(self.values) >= self.min_count:
            n = len(self.values)
            mean = sum(self.values) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / n)
            spike = value > mean + self.sigmas * std
        if math.isfinite(value):
            self.values.append(value)
        return spike

    def state_dict(self) -> list[float]:
        return list(self.values)

    def load_state_dict(self, values: list[float]) -> None:
        self.values.clear()
        self.values.extend(values)


def model_flops(cfg: ModelConfig, lengths: Sequence[int], lm_head_tokens: int | None = None) -> float:
    """Training FLOPs of one forward and backward pass over sequences of ``lengths`` tokens, each
    attending within itself: 6·(matmul params)·tokens + attention scores/values (PaLM's convention).

    The input embedding is a lookup, not a matmul, so it is left out. The LM head counts for
    ``lm_head_tokens`` positions (all by default; SFT sends only its targets there).
    """
    d, L, f, kv = cfg.d_model, cfg.n_layers, cfg.mlp_hidden, cfg.n_kv_heads * cfg.head_dim
    body_params = L * (2 * d * d + 2 * d * kv + 3 * d * f)
    tokens = sum(lengths)
    head_tokens = tokens if lm_head_tokens is None else lm_head_tokens
    attention = 12.0 * L * d * sum(n * n for n in lengths)
    return 6.0 * body_params * tokens + 6.0 * d * cfg.embedding_size * head_tokens + attention


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token of full ``seq_len`` rows (pretraining): see ``model_flops``."""
    return model_flops(cfg, [seq_len]) / seq_len


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Achievable dense matmul FLOP/s on ``device`` in ``dtype`` (the MFU denominator), measured.

    The best of ``repeats`` timed matmuls: other load on a shared machine only ever slows one down,
    so the fastest is the closest to what the hardware can do (and keeps MFU from exceeding 100%).
    """
    import torch  # here only: reading and plotting metrics need no torch (``olmo2 plot``)

    n = 8192 if device.type == "cuda" else size
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(record: dict, total_steps: int, eta_seconds: float, extra_keys: Sequence[str] = ()) -> str:
    """One step's console line: loss (and z-loss), the stage's own ``extra_keys``, gradient norm, LR,
    throughput, ETA; whichever of them the record has."""
    parts = [f"step {record['step']}/{total_steps}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    if "z_loss" in record:
        parts.append(f"z {record['z_loss']:.2e}")
    parts += [f"{k} {record[k]:.4g}" for k in extra_keys if isinstance(record.get(k), (int, float))]
    if "grad_norm" in record:
        parts.append(f"gnorm {record['grad_norm']:.3f}")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    if "tokens_per_sec" in record:
        parts.append(f"{record['tokens_per_sec']:,.0f} tok/s")
    if "mfu" in record:
        parts.append(f"mfu {100 * record['mfu']:.1f}%")
    parts.append(f"eta {format_duration(eta_seconds)}")
    if record.get("skipped"):
        parts.append(f"SKIPPED ({record.get('skip_reason')})")
    return " | ".join(parts)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
