"""OLMo-core mix lists (``olmo_core/data/mixes/*.txt``) as olmo2 mix YAML (``olmo2 mix import``).

A list has one ``label,path`` line per token file (``#`` comments and blank lines aside); paths are
relative to a data root and spell the tokenizer as ``{TOKENIZER}``. OLMo-core reads every line as one
file of the dataset, so a path listed twice is read twice: that is how ``dolma17.txt`` upsamples
Wikipedia. An olmo2 mix lists each file once and weights sources by ``share``, so each label becomes
one source whose share is its tokens (repeats counted) over all tokens, with a ``max_repeat`` that
lets it repeat as often as the list does. With every share given, or without sizes, no file is read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from olmo2.data.mix import MixConfig, SourceConfig
from olmo2.data.token_files import count_tokens

DOLMA2_TOKENIZER = "allenai/dolma2-tokenizer"  # as OLMo-core's TokenizerName.dolma2 spells it
ROOT_VARIABLE = "MIX_ROOT"  # the written paths are ${MIX_ROOT}/...: move the data, override the variable
_BRACED = re.compile(r"\{([^{}]*)\}")
_COUNT_THREADS = 16  # token counts of remote files are one request each: overlap them


class MixListError(ValueError):
    """A mix list line, or a ``--share``, that cannot be imported; the message names the file and line."""


@dataclass
class ImportedSource:
    """One label of the list: its files (each once, in list order) and what the import decided."""

    label: str
    first_line: int
    files: list[str] = field(default_factory=list)  # relative paths, tokenizer substituted
    entries: list[str] = field(default_factory=list)  # one per line, repeats kept
    entry_lines: list[int] = field(default_factory=list)  # the line of each entry
    tokens: int | None = None  # over entries (a repeated file counts each time); None: not counted
    unique_tokens: int | None = None  # over files
    share: float | None = None

    @property
    def max_repeat(self) -> float:
        """How often the list reads this source's data, at most: by tokens when known, else by file."""
        if self.unique_tokens:
            return max(1.0, self.tokens / self.unique_tokens)
        return float(max(self.entries.count(f) for f in self.files))


@dataclass
class MixImport:
    """What ``import_mix_list`` read and wrote; ``lines = entries + skipped``, ``entries = files + repeats``."""

    list_path: Path
    out: Path
    lines: int
    skipped: int  # comments and blank lines
    sources: list[ImportedSource]
    config: MixConfig

    @property
    def entries(self) -> int:
        return sum(len(s.entries) for s in self.sources)

    @property
    def files(self) -> int:
        return sum(len(s.files) for s in self.sources)

    def summary(self) -> str:
        repeats = self.entries - self.files
        rows = [
            f"{self.list_path}: {self.lines} lines = {self.entries} entries + {self.skipped} comments or "
            f"blank; {self.entries} entries = {self.files} files + {repeats} repeats of a file",
            f"wrote {self.out}: {len(self.sources)} sources, "
            + ("shares" if self.config.mode == "shares" else "as-is (no shares: each file read once)"),
            f"{'source':<36} {'files':>6} {'entries':>7} {'tokens':>10} {'share':>8} {'x':>6}",
        ]
        for s in self.sources:
            tokens = "-" if s.tokens is None else f"{s.tokens:.4g}"
            share = "-" if s.share is None else f"{s.share:.4%}"
            rows.append(
                f"{s.label:<36} {len(s.files):>6} {len(s.entries):>7} {tokens:>10} {share:>8} "
                f"{s.max_repeat:>6.3g}"
            )
        return "\n".join(rows)


def parse_share(text: str) -> tuple[str, float]:
    """``LABEL=FRACTION`` (``--share``) -> ``(label, fraction)``, the fraction in (0, 1]."""
    label, sep, value = text.rpartition("=")
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not sep or not label.strip() or not 0 < share <= 1:
        raise ValueError(f"{text!r}: expected LABEL=FRACTION with a fraction in (0, 1], e.g. wiki=0.05")
    return label.strip(), share


def read_mix_list(
    list_path: str | os.PathLike, tokenizer: str = DOLMA2_TOKENIZER
) -> tuple[list[ImportedSource], int, int]:
    """Parse a list -> (sources in order of first appearance, lines, comment or blank lines).

    Refuses a line without exactly one comma, an empty label or path, a ``{VAR}`` other than
    ``{TOKENIZER}``, and a file listed under two labels; each error names the file and line.
    """
    list_path = Path(list_path)
    sources: dict[str, ImportedSource] = {}
    owner: dict[str, tuple[str, int]] = {}  # path -> (label, line) of its first entry
    lines = skipped = 0
    with open(list_path, encoding="utf-8") as f:
        for lines, raw in enumerate(f, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                skipped += 1
                continue
            where = f"{list_path}:{lines}"
            parts = [p.strip() for p in text.split(",")]
            if len(parts) != 2:
                raise MixListError(f"{where}: expected one 'label,path' pair, got {text!r}")
            label, path = parts
            if not label or not path:
                raise MixListError(f"{where}: empty {'label' if not label else 'path'} in {text!r}")
            unknown = sorted({v for v in _BRACED.findall(path) if v != "TOKENIZER"})
            if unknown:
                raise MixListError(
                    f"{where}: {path!r} uses {', '.join('{' + v + '}' for v in unknown)}; only {{TOKENIZER}} "
                    "is known"
                )
            path = path.replace("{TOKENIZER}", tokenizer)
            first_label, first_line = owner.setdefault(path, (label, lines))
            if first_label != label:
                raise MixListError(
                    f"{where}: {path} is listed under label {label!r} here and under {first_label!r} at "
                    f"line {first_line}; a file belongs to one source"
                )
            source = sources.setdefault(label, ImportedSource(label, lines))
            if first_line == lines:
                source.files.append(path)
            source.entries.append(path)
            source.entry_lines.append(lines)
    if not sources:
        raise MixListError(f"{list_path}: no 'label,path' lines in {lines} lines")
    return list(sources.values()), lines, skipped


def _join(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{path}"


def _count(source: ImportedSource, root: str, list_path: Path, pool: ThreadPoolExecutor) -> None:
    """Set ``tokens`` and ``unique_tokens`` from the files' sizes; an unreadable file names its line."""

    def one(path: str) -> int:
        try:
            return count_tokens(_join(root, path))
        except (OSError, ValueError) as e:
            line = source.entry_lines[source.entries.index(path)]
            raise MixListError(f"{list_path}:{line} ({source.label}): {e}") from None

    sizes = dict(zip(source.files, pool.map(one, source.files), strict=True))
    source.unique_tokens = sum(sizes.values())
    source.tokens = sum(sizes[p] for p in source.entries)
    if not source.tokens:
        raise MixListError(
            f"{list_path}:{source.first_line}: label {source.label!r}: its files hold no tokens"
        )


def _assign_shares(
    sources: list[ImportedSource], given: dict[str, float], sizes: bool, root: str, list_path: Path
) -> None:
    """Given shares as they are; the rest split what is left by token count (none at all: as-is)."""
    missing = [s for s in sources if s.label not in given]
    for s in sources:
        s.share = given.get(s.label)
    if not missing or (not given and not sizes):
        return
    if not sizes:
        raise MixListError(
            f"{list_path}: --share is given for some labels but not for {', '.join(s.label for s in missing)}; "
            "give one for every label, or drop --no-sizes so the rest are weighted by their token counts"
        )
    rest = 1.0 - sum(given.values())
    if rest <= 0:
        raise MixListError(
            f"{list_path}: the --share values sum to {sum(given.values()):.6g}, leaving nothing for "
            f"{', '.join(s.label for s in missing)}"
        )
    with ThreadPoolExecutor(_COUNT_THREADS) as pool:
        for s in missing:
            _count(s, root, list_path, pool)
    total = sum(s.tokens for s in missing)
    for s in missing:
        s.share = rest * s.tokens / total


def _yaml_text(result: MixImport, root: str, tokenizer: str) -> str:
    """The mix YAML, with a comment per source saying where it came from."""
    cfg = result.config
    head = {"name": cfg.name, "variables": cfg.variables}
    text = [
        f"# Imported by `olmo2 mix import` from the OLMo-core mix list {result.list_path.name}",
        f"# ({result.lines} lines: {result.entries} entries, {result.files} files), {{TOKENIZER}} = {tokenizer}.",
        f"# Paths are under ${{{ROOT_VARIABLE}}} (= {root}); to read them elsewhere, override "
        f"variables.{ROOT_VARIABLE}=...",
        yaml.safe_dump(head, sort_keys=False).rstrip(),
        "sources:",
    ]
    for s, sc in zip(result.sources, cfg.sources, strict=True):
        tokens = "" if s.tokens is None else f", tokens {s.tokens}"
        text.append(
            f"# {s.label}: entries {len(s.entries)} (first at line {s.first_line}), files {len(s.files)}{tokens}"
        )
        entry = {"name": sc.name, "paths": sc.paths}
        if sc.share is not None:
            entry["share"] = sc.share
        if sc.max_repeat > 1:
            entry["max_repeat"] = sc.max_repeat
        text.append(yaml.safe_dump([entry], sort_keys=False, width=1000).rstrip())
    return "\n".join(text) + "\n"


def import_mix_list(
    list_path: str | os.PathLike,
    root: str,
    out: str | os.PathLike,
    tokenizer: str = DOLMA2_TOKENIZER,
    shares: Sequence[tuple[str, float]] = (),
    sizes: bool = True,
) -> MixImport:
    """Turn an OLMo-core mix list into an olmo2 mix YAML: one source per label, files under ``root``.

    Shares come from ``shares`` (``(label, fraction)`` pairs) and, for the other labels, from token
    counts (each file's size under ``root``, a folder or URL). ``sizes=False`` reads no file: then
    either every label has a share or none does (an as-is mix, where a repeated file is read once).
    """
    list_path = Path(list_path)
    sources, lines, skipped = read_mix_list(list_path, tokenizer)
    given: dict[str, float] = {}
    labels = {s.label for s in sources}
    for label, share in shares:
        if label not in labels:
            raise MixListError(f"--share {label}={share}: {list_path} has no label {label!r}")
        if given.setdefault(label, share) != share:
            raise MixListError(f"--share {label} is given twice, as {given[label]} and {share}")
    root = root if "://" in root else os.path.abspath(root)
    _assign_shares(sources, given, sizes, root, list_path)
    try:
        config = MixConfig(
            sources=[
                SourceConfig(
                    s.label,
                    [_join(f"${{{ROOT_VARIABLE}}}", p) for p in s.files],
                    s.share,
                    max_repeat=s.max_repeat,
                )
                for s in sources
            ],
            name=list_path.stem,
            variables={ROOT_VARIABLE: root.rstrip("/")},
        )
    except ValueError as e:
        raise MixListError(f"{list_path}: {e}") from None
    out = Path(out)
    result = MixImport(list_path, out, lines, skipped, sources, config)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(_yaml_text(result, root, tokenizer), encoding="utf-8")
    os.replace(tmp, out)
    return result
