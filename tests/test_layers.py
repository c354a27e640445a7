"""olmo2's modules import downwards through its layers and never round in a circle.

A static scan (``ast``) of every import in ``src/olmo2``, at module top and inside functions alike: a
deferred import still ties the modules together, it only hides the knot until run time.
"""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

# Lowest first; a module may import its own layer and those below. A prefix covers its submodules.
LAYERS = [
    ("olmo2.config", "olmo2.assets", "olmo2.folder_lock", "olmo2.storage"),
    ("olmo2.tokenizer", "olmo2.chat"),
    ("olmo2.model", "olmo2.generate", "olmo2.data"),
    ("olmo2.train",),
    ("olmo2.eval", "olmo2.posttrain"),
    ("olmo2.demo",),
    ("olmo2.recipe",),
    ("olmo2.commands", "olmo2.cli"),
]

# Upward imports being removed on other branches: (importer, imported). Delete each entry at merge.
KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "olmo2").rglob("*.py"))}


def _layer(module: str) -> int:
    if module == "olmo2":  # the package's __init__: only the version
        return 0
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def _imports(module: str) -> list[tuple[int, str]]:
    """``(line, imported olmo2 module)`` for every import statement in ``module``'s file."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "olmo2"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "olmo2":
                continue
            for alias in node.names:  # `from olmo2.pkg import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else node.module))
    return found


EDGES = {m: [(line, dst) for line, dst in _imports(m) if dst != m] for m in MODULES}


def _where(src: str, line: int, dst: str) -> str:
    return f"{MODULES[src].relative_to(SRC.parent)}:{line} imports {dst}"


def test_every_import_names_a_module():
    unknown = [
        _where(m, line, dst) for m, edges in EDGES.items() for line, dst in edges if dst not in MODULES
    ]
    assert not unknown, "\n".join(unknown)


def test_no_upward_import():
    upward = [
        _where(m, line, dst) + f" (layer {_layer(dst)} above {_layer(m)})"
        for m, edges in EDGES.items()
        for line, dst in edges
        if _layer(dst) > _layer(m) and (m, dst) not in KNOWN_UPWARD_IMPORTS
    ]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_known_upward_imports_are_still_there():
    """An exception that no longer happens is stale: remove it from the list."""
    edges = {(m, dst) for m, found in EDGES.items() for _, dst in found}
    assert not KNOWN_UPWARD_IMPORTS - edges, sorted(KNOWN_UPWARD_IMPORTS - edges)


def test_no_import_cycle():
    """Depth-first search; a back edge closes a cycle, reported edge by edge with file and line."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[tuple[str, int, str]] = []  # (importer, line, imported) from the search's root

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        for line, dst in EDGES[m]:
            path.append((m, line, dst))
            if state.get(dst) == 1:
                start = next(i for i, (src, _, _) in enumerate(path) if src == dst)
                return [_where(*edge) for edge in path[start:]]
            if dst in MODULES and dst not in state and (cycle := visit(dst)):
                return cycle
            path.pop()
        state[m] = 2
        return None

    for m in MODULES:
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle:\n" + "\n".join(cycle))
