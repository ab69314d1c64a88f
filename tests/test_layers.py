"""Imports run one way (docs/architecture.md): every import of a project module, lazy ones inside
functions included, goes to the same layer or one below, and no two modules import each other
through any chain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# layer -> the layers it may import
ALLOWED = {
    "core": {"core"},
    "net": {"core", "net"},
    "runtime": {"core", "net", "runtime"},
    "train": {"core", "net", "train"},
    "export": {"core", "net", "runtime", "export"},
    "benchmarks": {"core", "net", "runtime", "train", "export", "benchmarks"},
    "cli": {"core", "net", "runtime", "train", "export", "cli"},
}
PACKAGES = ("engine", "train", "export", "benchmarks")


def layer_of(module: str) -> str | None:
    top = module.split(".")[0]
    if module == "cli" or module.startswith("train.recipes"):
        return "cli"  # entry scripts on top
    if module.startswith("engine.core") or module == "engine.core":
        return "core"
    if module.startswith("engine.net"):
        return "net"
    if top == "engine":
        return "runtime"
    return top if top in ("train", "export", "benchmarks") else None


def project_modules() -> dict[str, Path]:
    mods = {"cli": ROOT / "cli.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """Project modules ``module`` imports anywhere in its file (top level or lazily), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from engine.core import color" imports engine.core.color when that is a module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.append((name, node.lineno))
    return found


def _graph() -> dict[str, list[tuple[str, int]]]:
    mods = project_modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_import_runs_downward():
    bad = []
    for module, targets in _graph().items():
        src = layer_of(module)
        for target, line in targets:
            dst = layer_of(target)
            if dst not in ALLOWED[src]:
                bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in ts if not _is_package_of(t, m)}) for m, ts in _graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _is_package_of(target: str, module: str) -> bool:
    """``engine.backends`` (its ``__init__``) seen from ``engine.backends.ort``: a package, not a peer."""
    return module.startswith(target + ".")


def test_core_imports_nothing_heavy_at_import_time():
    for module, path in project_modules().items():
        if layer_of(module) != "core":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]  # torch variants import lazily
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
        assert not names & {"torch", "onnx", "onnxruntime", "tensorrt", "ray", "cv2", "PIL"}, module


@pytest.mark.parametrize("src,dst,ok", [
    ("engine.core.color", "engine.pipeline", False),
    ("engine.net.model", "train.losses", False),
    ("engine.backends.torch_eager", "export.to_onnx", False),
    ("engine.pipeline", "train.trainer", False),
    ("export.trt_build", "engine.backends.trt", True),
    ("train.trainer", "engine.net.checkpoint", True),
])
def test_the_rule_itself(src, dst, ok):
    assert (layer_of(dst) in ALLOWED[layer_of(src)]) is ok
