"""The house rules of the code base, checked on every run: no import cycles among edgekit's and the
runtime's modules (module-level and function-level imports alike), no module over 500 lines, and
function-level imports only for heavy or optional packages (the host CLI excepted: `--help` stays instant)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "edgekit", ROOT / "runtime" / "edgekit_runtime")
MAX_LINES = 500
# Imported inside functions on purpose: slow to import, or optional on the device.
HEAVY = {"torch", "transformers", "onnxsim", "tensorrt", "matplotlib", "sklearn", "onnxruntime", "cuda",
         "accelerate", "gguf", "safetensors", "tokenizers", "jinja2", "tqdm", "onnx", "cryptography", "optimum"}
# edgekit.cli: click adapters import the command's module when it runs (the compiler pulls in torch);
# memprobe: a subprocess that times the runtime's own import.
LAZY_CLI = {"edgekit.cli", "edgekit_runtime.bench.memprobe"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            parts = list(path.relative_to(package.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, node: ast.AST, known: set[str]) -> list[str]:
    """The known modules an import statement loads (``from pkg import sub`` loads pkg.sub)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.append(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _imported(name, path, node, known)}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (or a module importing itself), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = strongly_connected(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_over_500_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_function_level_imports_are_heavy_packages_only():
    modules = _modules()
    known = set(modules)
    wrong = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                if name in LAZY_CLI:
                    continue
                internal = _imported(name, path, node, known)
                roots = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) \
                    else {(node.module or "").split(".")[0]} if not node.level else {""}
                if internal or not roots <= HEAVY:
                    wrong.append(f"{name}:{node.lineno} imports {internal or sorted(roots)} inside {fn.name}()")
    assert wrong == []


def test_every_host_package_is_in_the_wheel():
    """pyproject lists edgekit's packages by name: a new stage package left out would be missing
    from a non-editable install."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgekit").rglob("__init__.py")}
    assert on_disk - listed == set()
