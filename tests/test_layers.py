"""The layer rule of DESIGN.md, enforced: every import under hone/ goes downward, and no two files import each other.

Every ``import`` / ``from ... import`` node counts, wherever it is (module level, inside functions, under
``if TYPE_CHECKING``); relative imports are resolved. An import names one file: ``import a.b.c`` and
``from a.b import c`` (c a module) name ``a/b/c.py``; ``from a.b import name`` names ``a/b/__init__.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the longest entry that is it or a package above it ("hone" is only the
# package face hone/__init__.py, never a catch-all).
LAYERS: dict[str, int] = {
    "hone.errors": 0, "hone.io": 0, "hone.version": 0, "hone.secrets": 0, "hone.layout": 0, "hone.logs": 0,
    "hone.config": 1,
    "hone.models": 2, "hone.data": 2,
    "hone.training": 3,
    "hone.algorithms": 4,
    "hone.evaluation": 5, "hone.registry": 5, "hone.kube": 5,
    "hone.api": 6, "hone.hub": 6, "hone.worker": 6,
    "hone.pipeline": 7,
    "hone": 8,
    # `python -m hone` runs the CLI, so it sits with it (at layer 8 it would import upward by necessity)
    "hone.cli": 9, "hone.__main__": 9,
}


def module_name(path: Path, src: Path) -> str:
    """``<src>/hone/data/sources.py`` -> ``hone.data.sources``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of ``module`` (the longest matching entry), or None when no entry places it."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        name = ".".join(parts[:n])
        if name in layers:
            return layers[name]
    return layers.get(module) if len(parts) == 1 else None


def imports_of(path: Path, module: str, modules: set[str], package: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``package`` modules in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]  # the package the file is in
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level - 1 <= len(here) else []
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule's file
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if sub in modules else target))
    return [(line, t) for line, t in found if t == package or t.startswith(package + ".")]


def find_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest cycle through ``start`` inside the component, as a chain that ends where it starts."""
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(prev[chain[-1]])
                return chain[::-1] + [start]
            if nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    return sorted(component)  # not reached: a strongly connected component always has a cycle


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.add(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def check_layers(src: Path, package: str = "hone", layers: dict[str, int] = LAYERS) -> list[str]:
    """Every problem under ``<src>/<package>``: modules in no layer, upward imports, import cycles."""
    files = {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}
    modules = set(files)
    rel = {m: p.relative_to(src).as_posix() for m, p in files.items()}
    problems: list[str] = []
    for m in sorted(modules):
        if layer_of(m, layers) is None:
            problems.append(f"{rel[m]}: module {m} is in no layer: place it in LAYERS in tests/test_layers.py "
                            f"(and in DESIGN.md's list of layers)")
    graph: dict[str, set[str]] = {m: set() for m in modules}
    where: dict[tuple[str, str], int] = {}
    for m in sorted(modules):
        mine = layer_of(m, layers)
        for line, target in imports_of(files[m], m, modules, package):
            if target == m:
                continue
            theirs = layer_of(target, layers)
            if theirs is None:
                if target not in modules:
                    problems.append(f"{rel[m]}:{line}: imports {target}, which is in no layer (and not a module here)")
                continue  # a module in no layer is reported once, above
            if mine is not None and theirs > mine:
                problems.append(f"{rel[m]}:{line}: imports {target} (layer {mine} -> layer {theirs}): "
                                f"an upward import")
            if target in modules:
                graph[m].add(target)
                where.setdefault((m, target), line)
    for comp in sorted(strongly_connected(graph), key=min):
        seen: set[frozenset[tuple[str, str]]] = set()
        for start in sorted(comp):  # the shortest cycle through each file, each cycle said once
            chain = find_cycle(graph, comp, start)
            edges = frozenset(zip(chain, chain[1:]))
            if edges in seen:
                continue
            seen.add(edges)
            steps = " -> ".join(f"{a} ({rel[a]}:{where[(a, b)]})" for a, b in zip(chain, chain[1:]))
            problems.append(f"import cycle: {steps} -> {chain[-1]}")
    return problems


def test_hone_imports_follow_the_layers():
    problems = check_layers(ROOT)
    assert not problems, "layer rule broken (DESIGN.md, 'Layers'):\n" + "\n".join(problems)


# -- the checker itself ----------------------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


CLEAN = {
    "hone/__init__.py": "from hone.errors import HoneError\n",
    "hone/errors.py": "",
    "hone/config.py": "from hone.errors import HoneError\n",
    "hone/data/__init__.py": "",
    "hone/data/records.py": "from hone.config import x\nfrom . import sources\n",
    "hone/data/sources.py": "from ..errors import HoneError\n",
    "hone/models/load.py": "from hone.data.records import y\n",
    "hone/training/trainer.py": "import hone.data.records\nfrom hone.models import load\n",
    "hone/cli/main.py": "import hone\nfrom hone.training.trainer import train\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    assert check_layers(_tree(tmp_path, CLEAN)) == []


def test_checker_catches_upward_imports(tmp_path):
    src = _tree(tmp_path, {
        **CLEAN,
        # plain, inside a function, under TYPE_CHECKING, relative, and the package face
        "hone/config.py": "from hone.errors import HoneError\nimport hone.training.trainer\n",
        "hone/models/load.py": "def f():\n    from hone.cli.main import main\n",
        "hone/data/sources.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..training import trainer\n",
        "hone/training/trainer.py": "from hone import __version__\n",
    })
    problems = check_layers(src)
    assert "hone/config.py:2: imports hone.training.trainer (layer 1 -> layer 3): an upward import" in problems
    assert "hone/models/load.py:2: imports hone.cli.main (layer 2 -> layer 9): an upward import" in problems
    assert "hone/data/sources.py:3: imports hone.training.trainer (layer 2 -> layer 3): an upward import" in problems
    assert "hone/training/trainer.py:1: imports hone (layer 3 -> layer 8): an upward import" in problems
    assert len(problems) == 4, problems


def test_checker_catches_cycles(tmp_path):
    src = _tree(tmp_path, {
        **CLEAN,
        # records -> sources (CLEAN) and sources -> records: a cycle inside one layer
        "hone/data/sources.py": "def f():\n    from hone.data.records import y\n",
        # a three-file cycle through a package's __init__
        "hone/training/__init__.py": "from hone.training.trainer import train\n",
        "hone/training/trainer.py": "from hone.training import loss\n",
        "hone/training/loss.py": "from hone.training import something\n",
    })
    problems = check_layers(src)
    assert ("import cycle: hone.data.records (hone/data/records.py:2) -> hone.data.sources (hone/data/sources.py:2)"
            " -> hone.data.records") in problems
    assert ("import cycle: hone.training (hone/training/__init__.py:1) -> hone.training.trainer "
            "(hone/training/trainer.py:1) -> hone.training.loss (hone/training/loss.py:1) -> hone.training") in problems
    assert len(problems) == 2, problems


def test_checker_asks_to_place_unknown_modules(tmp_path):
    src = _tree(tmp_path, {**CLEAN, "hone/mystery.py": "", "hone/gadgets/__init__.py": "from hone import errors\n"})
    problems = check_layers(src)
    assert len(problems) == 2, problems
    assert all("is in no layer: place it in LAYERS" in p for p in problems)
    assert any(p.startswith("hone/mystery.py: module hone.mystery") for p in problems)


@pytest.mark.parametrize("module,layer", [("hone", 8), ("hone.__main__", 9), ("hone.data.sources", 2),
                                          ("hone.cli.main", 9), ("hone.layout", 0), ("hone.nothing", None)])
def test_layer_of(module, layer):
    assert layer_of(module, LAYERS) == layer
