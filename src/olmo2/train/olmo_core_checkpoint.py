"""OLMo-core checkpoints both ways: ``olmo2 convert from-olmo-core`` / ``to-olmo-core``.

OLMo-core (the trainer behind OLMo 2 32B) and this project both save a model with its AdamW state
through torch.distributed.checkpoint (DCP) under the keys ``model.<parameter>`` and
``optim.state.<parameter>.{step,exp_avg,exp_avg_sq}``; only the parameter names differ
(``blocks.3.attention.w_q.weight`` there, HF's ``model.layers.3.self_attn.q_proj.weight`` here, see
``NAMES``), and so does the shape of the param groups: OLMo-core's trainer writes them per parameter
(``flatten_optimizer_state_dict``), ``save_model_and_optim_state`` and we write them per group.

Import (``import_olmo_core``) checks the name and shape of every tensor against the model of the
given config before anything is written, loads the weights, both AdamW moments and the step counts
bit for bit, and writes a complete training checkpoint (``train/checkpoint.py``) that
``init.checkpoint`` loads with ``init.load_optimizer: true``. The param groups (betas, eps, weight
decay; the LR is set by the schedule at every step) come from the config's ``optim`` section, as they
would for a run started here; where OLMo-core's differ, the import says so.

Export (``export_olmo_core``) writes what OLMo-core's trainer writes for a model and optimizer: a DCP
folder with per-parameter param groups (the settings of our groups, plus OLMo-core's ``initial_lr``,
with ``torch.optim.AdamW``'s defaults for the implementation flags such as ``fused``). OLMo-core loads
it with ``load_model_and_optim_state(dir, model, optim, flatten_optimizer_state=True)`` or as a
trainer's ``load_path``.

Reading executes no code from the checkpoint. DCP's ``.metadata`` is a pickle: it is read with an
unpickler that admits only DCP's metadata classes (OLMo-core's copy of the storage record is read as
torch's, so OLMo-core need not be installed); tensors load with ``weights_only=True``, and so do the
few plain values read (param-group settings).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from olmo2.config import read_yaml
from olmo2.model.checkpoint import CheckpointError
from olmo2.model.config import ModelConfig
from olmo2.model.spec import model_config
from olmo2.model.transformer import build_model
from olmo2.train.checkpoint import checkpoint_fault, single_process_dcp, write_checkpoint
from olmo2.train.config import load_train_config
from olmo2.train.engine import Part
from olmo2.train.optim import OptimConfig, build_optimizer
from olmo2.train.safe_dcp import SafeLoadPlanner, SafeReader

# (ours, OLMo-core's); ``{i}`` is a layer index. Pure renaming: no tensor is split, fused or permuted.
NAMES = (
    ("model.embed_tokens.weight", "embeddings.weight"),
    ("model.norm.weight", "lm_head.norm.weight"),
    ("lm_head.weight", "lm_head.w_out.weight"),
    ("model.layers.{i}.self_attn.q_proj.weight", "blocks.{i}.attention.w_q.weight"),
    ("model.layers.{i}.self_attn.k_proj.weight", "blocks.{i}.attention.w_k.weight"),
    ("model.layers.{i}.self_attn.v_proj.weight", "blocks.{i}.attention.w_v.weight"),
    ("model.layers.{i}.self_attn.o_proj.weight", "blocks.{i}.attention.w_out.weight"),
    ("model.layers.{i}.self_attn.q_norm.weight", "blocks.{i}.attention.q_norm.weight"),
    ("model.layers.{i}.self_attn.k_norm.weight", "blocks.{i}.attention.k_norm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.attention_norm.weight"),
    ("model.layers.{i}.mlp.gate_proj.weight", "blocks.{i}.feed_forward.w1.weight"),
    ("model.layers.{i}.mlp.down_proj.weight", "blocks.{i}.feed_forward.w2.weight"),
    ("model.layers.{i}.mlp.up_proj.weight", "blocks.{i}.feed_forward.w3.weight"),
    ("model.layers.{i}.post_feedforward_layernorm.weight", "blocks.{i}.feed_forward_norm.weight"),
)
ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")
GROUP_SETTINGS = ("betas", "eps", "weight_decay")  # compared on import; the LR follows the schedule
MODEL_AND_OPTIM = "model_and_optim"  # the DCP folder inside an OLMo-core trainer's step<N>/


def _renamer(pairs: list[tuple[str, str]]):
    patterns = [
        (re.compile(re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), dst) for src, dst in pairs
    ]

    def rename(name: str) -> str | None:
        for pattern, dst in patterns:
            if m := pattern.match(name):
                return dst.format(**m.groupdict())
        return None

    return rename


to_olmo_core_name = _renamer(list(NAMES))
from_olmo_core_name = _renamer([(theirs, ours) for ours, theirs in NAMES])


def _load(reader: SafeReader, targets: dict) -> dict:
    """Fill ``targets`` (DCP key -> tensor to copy into, or a placeholder for a plain value)."""
    planner = SafeLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
    with single_process_dcp():
        dcp.load(targets, storage_reader=reader, planner=planner, no_dist=True)
    return targets


def _tensors(metadata: Metadata) -> dict[str, TensorStorageMetadata]:
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _configs(spec: str) -> tuple[ModelConfig, OptimConfig]:
    """A training YAML gives the model and its optimizer settings; a preset, model directory or model
    YAML gives the model, with OLMo 2's AdamW settings (``OptimConfig``'s defaults)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file() and "model" in read_yaml(path):
        cfg = load_train_config(path)
        return cfg.model, cfg.optim
    return model_config(spec), OptimConfig()


def _new_output(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst}: already exists and is not empty; choose a new output directory")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _check_tensors(
    found: dict[str, TensorStorageMetadata], expected: dict[str, tuple], source: Path, against: str
) -> None:
    """Every expected tensor is there with its shape, and no other weight or AdamW state is."""
    missing = [k for k in expected if k not in found]
    ours = re.compile(r"^(model|optim\.state)\.")
    unexpected = [k for k in found if ours.match(k) and k not in expected]
    wrong = [
        f"{k}: {tuple(found[k].size)} in the checkpoint, {expected[k]} in {against}"
        for k in expected
        if k in found and tuple(found[k].size) != expected[k]
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of another shape: {'; '.join(wrong[:5])}")
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} this architecture does not have: {_listing(unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: does not match {against}: " + " | ".join(problems))


def _olmo_core_folder(src: Path) -> Path:
    """The DCP folder of an OLMo-core checkpoint: a trainer's ``step<N>/model_and_optim`` or ``src``."""
    if not src.is_dir():
        raise CheckpointError(f"checkpoint not found: {src}")
    return src / MODEL_AND_OPTIM if (src / MODEL_AND_OPTIM / ".metadata").is_file() else src


def _their_group_settings(reader: SafeReader, metadata: Metadata) -> dict[str, dict]:
    """``{OLMo-core parameter: {setting: value}}`` for ``GROUP_SETTINGS``, from per-parameter
    (flattened) or per-group param groups; empty if the checkpoint has neither."""
    keys = [
        k
        for k in metadata.state_dict_metadata
        if k.startswith("optim.param_groups.") and k.rsplit(".", 1)[1] in (*GROUP_SETTINGS, "params")
    ]
    values = _load(reader, dict.fromkeys(keys)) if keys else {}
    settings: dict[str, dict] = {}
    if "optim.param_groups.0.params" in values:  # one entry per group, listing its parameters
        for i in range(len([k for k in values if k.endswith(".params")])):
            group = {s: values.get(f"optim.param_groups.{i}.{s}") for s in GROUP_SETTINGS}
            settings.update(dict.fromkeys(values.get(f"optim.param_groups.{i}.params") or [], group))
    else:
        for key, value in values.items():
            name, setting = key.removeprefix("optim.param_groups.").rsplit(".", 1)
            settings.setdefault(name, {})[setting] = value
    return settings


def _numbers(value) -> list[float]:
    """A setting (a number, or a tuple such as betas) as a list of floats, to compare."""
    return [float(v) for v in (value if isinstance(value, (tuple, list)) else [value])]


def _setting_notes(theirs: dict[str, dict], optimizer: torch.optim.Optimizer, names: dict) -> list[str]:
    """One line per setting that the imported param groups change, naming the parameters."""
    changed: dict[str, list[str]] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            before = theirs.get(to_olmo_core_name(names[param]), {})
            for setting in GROUP_SETTINGS:
                old, new = before.get(setting), group[setting]
                if old is not None and _numbers(old) != _numbers(new):
                    changed.setdefault(f"{setting} {old} -> {new}", []).append(names[param])
    return [f"note: {change} for {_listing(params)} (from the config)" for change, params in changed.items()]


def import_olmo_core(src: str | Path, dst: str | Path, *, config: str) -> str:
    """Import an OLMo-core model + AdamW checkpoint as an olmo2 training checkpoint that ``init.checkpoint``
    loads with its optimizer state (spec §5: stage 2 starts from stage 1 with its AdamW moments).

    ``config`` is the training YAML of the run that will start from it (its model and ``optim``
    settings), or a preset, model YAML or model directory (then OLMo 2's AdamW settings).
    Returns what was written."""
    src, dst = Path(src), Path(dst)
    model_cfg, optim_cfg = _configs(config)
    _new_output(dst)
    source = _olmo_core_folder(src)
    reader = SafeReader(source)
    metadata = reader.read_metadata()
    if not any(k.startswith("optim.state.") for k in metadata.state_dict_metadata):
        raise CheckpointError(f"{source}: holds no optimizer state (optim.state.*); import the weights "
                              "through Hugging Face format instead (OLMo-core's convert_checkpoint_to_hf, "
                              "then olmo2 convert from-hf)")  # fmt: skip
    model = build_model(model_cfg, "meta").to_empty(device="cpu")
    model.rotary.build(model_cfg.max_seq_len, torch.device("cpu"))
    optimizer = build_optimizer(model, optim_cfg)
    targets, names = {}, {}
    for name, param in model.named_parameters():
        theirs, names[param] = to_olmo_core_name(name), name
        state = optimizer.state[param] = {
            "step": torch.zeros((), dtype=torch.float32, device=param.device),
            "exp_avg": torch.zeros_like(param),
            "exp_avg_sq": torch.zeros_like(param),
        }
        targets[f"model.{theirs}"] = param.data
        targets.update({f"optim.state.{theirs}.{key}": state[key] for key in ADAMW_STATE})
    expected = {k: tuple(t.shape) for k, t in targets.items()}
    _check_tensors(_tensors(metadata), expected, source, "the config's model")
    _load(reader, targets)
    steps = sorted({int(state["step"].item()) for state in optimizer.state.values()})
    notes = _setting_notes(_their_group_settings(reader, metadata), optimizer, names)
    if steps == [0] and any(bool(state["exp_avg_sq"].any()) for state in optimizer.state.values()):
        notes.append(
            "note: the AdamW step counts are 0 but the moments are not (OLMo-core's SkipStepAdamW with "
            "step_increment_bugfix=False never counts steps); training here bias-corrects from step 1"
        )
    if len(steps) > 1:
        notes.append(
            f"note: the parameters' AdamW step counts differ ({steps[0]}..{steps[-1]}); kept as they are"
        )
    imported = {"olmo_core": str(src), "optimizer_steps": steps[-1]}
    write_checkpoint(dst, {"model": Part(model, optimizer)}, {"step": steps[-1], "imported_from": imported})
    return "\n".join([*notes, f"wrote {dst} (model + AdamW state after {steps[-1]} step(s) of {src})"])


def export_olmo_core(src: str | Path, dst: str | Path) -> str:
    """Export an olmo2 training checkpoint ``step<N>/`` (model + AdamW state) as an OLMo-core model and
    optimizer checkpoint, loadable with OLMo-core's ``load_model_and_optim_state(...,
    flatten_optimizer_state=True)`` or as its trainer's ``load_path``. Returns what was written."""
    src, dst = Path(src), Path(dst)
    if not (src / "train").is_dir():
        raise CheckpointError(f"{src}: not an olmo2 training checkpoint (no train/ folder)")
    if fault := checkpoint_fault(src):
        raise CheckpointError(f"{src} is damaged: {fault}")
    _new_output(dst)
    reader = SafeReader(src / "train")
    metadata = reader.read_metadata()
    found = _tensors(metadata)
    params = [k.removeprefix("model.") for k in found if k.startswith("model.")]
    unknown = [p for p in params if to_olmo_core_name(p) is None]
    if unknown:
        raise CheckpointError(f"{src / 'train'}: no OLMo-core name for {_listing(unknown)}")
    keys = {f"model.{p}" for p in params} | {f"optim.state.{p}.{s}" for p in params for s in ADAMW_STATE}
    _check_tensors(
        found, {k: tuple(found[k].size) for k in keys}, src / "train", "its weights with AdamW state"
    )
    n_groups = sum(
        1 for k in metadata.state_dict_metadata if re.fullmatch(r"optim\.param_groups\.\d+\.params", k)
    )
    group_keys = [
        f"optim.param_groups.{i}.{s}" for i in range(n_groups) for s in ("params", "lr", *GROUP_SETTINGS)
    ]
    targets = {k: torch.empty(found[k].size, dtype=found[k].properties.dtype) for k in sorted(keys)}
    values = _load(reader, {**targets, **dict.fromkeys(group_keys)})
    model = {to_olmo_core_name(p): values[f"model.{p}"] for p in params}
    optim = {
        f"state.{to_olmo_core_name(p)}.{s}": values[f"optim.state.{p}.{s}"]
        for p in params
        for s in ADAMW_STATE
    }
    flags = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults  # implementation flags
    for i in range(n_groups):
        group = {s: values[f"optim.param_groups.{i}.{s}"] for s in ("lr", *GROUP_SETTINGS)}
        for p in values[f"optim.param_groups.{i}.params"]:
            settings = {**flags, **group, "initial_lr": group["lr"]}
            optim.update({f"param_groups.{to_olmo_core_name(p)}.{k}": v for k, v in settings.items()})
    without_groups = [p for p in params if f"param_groups.{to_olmo_core_name(p)}.lr" not in optim]
    if without_groups:
        raise CheckpointError(f"{src / 'train'}: no param group holds {_listing(without_groups)}")
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with single_process_dcp():
            dcp.save({"model": model, "optim": optim}, checkpoint_id=str(tmp), no_dist=True)
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"wrote {dst} ({len(model)} tensors with their AdamW state, per-parameter param groups)"
