"""The shape of the package, read from the source with ``ast`` (nothing is imported).

* no import cycle between modules, nor between top-level packages;
* floors: a module imports only modules of its own floor or of lower floors (:data:`FLOORS`);
* sizes: modules under 500 lines, functions under 80 lines and at most 8 parameters.

Every import counts, including those inside functions, and importing ``a.b.c`` also runs the
``__init__`` of ``a.b`` (unless the importer lives inside it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "mobilecnn"

#: The floors, lowest first. A top-level module or package of mobilecnn sits on exactly one floor and may
#: import only from its own floor and the floors below. ``mobilecnn`` is the package's own ``__init__``
#: (the public facade: create_model, list_models, profile...).
FLOORS: list[tuple[str, ...]] = [
    ("errors", "validators", "files", "device", "fields"),  # ground: no project imports but each other
    ("plots",),  # PNG figures (matplotlib), drawn by train, evaluate, bench, reproduce
    ("data",),  # files on disk -> batches; THE image definition
    ("layers",),  # building blocks
    ("models",),  # the zoo, its registry and its weights-file format
    ("analysis",),  # complexity counting, the papers' tables
    ("runs",),  # the run directory and training checkpoints
    ("train",),  # recipes, the loop, fine-tuning
    ("weights",),  # published checkpoints -> mobilecnn safetensors
    ("deploy",),  # export, int8, runtimes, predict
    ("evaluate", "reproduce_measure", "reproduce", "reproduce_segmentation", "reproduce_detection", "reproduce_cost",
     "reproduce_alexnet", "reproduce_mobilenet_v2", "reproduce_plan", "reproduce_report"),  # the commands' library functions that use everything below
    (ROOT,),  # the public facade
    ("cli",),  # the command line
]

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(name: str, tree: ast.Module) -> set[str]:
    """Project modules ``name`` imports anywhere (function bodies included), relative imports resolved."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules
            if len(submodules) < len(node.names):  # a name that is not a submodule: the module itself is used
                found.add(target)
    targets = {t for t in found if t in MODULES}
    # importing a.b.c runs a/__init__ and a/b/__init__ first, except those the importer is inside of
    inside = set(_ancestors(name)) | {name}
    for t in list(targets):
        targets.update(a for a in _ancestors(t) if a not in inside and a in MODULES)
    targets.discard(name)
    return targets


GRAPH = {name: _imported(name, tree) for name, tree in TREES.items()}


def _unit(name: str) -> str:
    """The top-level module or package of mobilecnn that ``name`` belongs to (``mobilecnn`` for the root)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_floor_table_names_every_unit_once():
    listed = [unit for floor in FLOORS for unit in floor]
    assert len(listed) == len(set(listed)), "a unit is on two floors"
    units = {_unit(name) for name in MODULES}
    assert units == set(listed), f"not on a floor: {sorted(units - set(listed))}; gone: {sorted(set(listed) - units)}"


def test_the_graph_sees_relative_and_function_level_imports():
    # a sanity check of the parser on imports known to exist
    assert "mobilecnn.models.registry" in GRAPH["mobilecnn.models.shufflenet_v1"]
    assert "mobilecnn.models" in GRAPH["mobilecnn.weights.infer"]  # imported inside a function
    assert "mobilecnn.weights" in GRAPH["mobilecnn.cli.weights"]  # imported inside a function


def test_no_module_import_cycle():
    assert _find_cycle(GRAPH) is None, "import cycle: " + " -> ".join(_find_cycle(GRAPH))


def test_no_package_import_cycle():
    units: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        units.setdefault(_unit(name), set()).update(_unit(t) for t in targets if _unit(t) != _unit(name))
    cycle = _find_cycle(units)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_floor():
    floor_of = {unit: i for i, floor in enumerate(FLOORS) for unit in floor}
    upward = [f"{name} (floor {floor_of[_unit(name)]}) imports {t} (floor {floor_of[_unit(t)]})"
              for name, targets in sorted(GRAPH.items()) for t in sorted(targets)
              if floor_of[_unit(t)] > floor_of[_unit(name)]]
    assert not upward, "\n".join(upward)


def _parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return len([n for n in names if n not in ("self", "cls")])


def _functions(node: ast.AST, prefix: str):
    """``(qualified name, function node)`` of every function and method under ``node``, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{child.name}", child
            yield from _functions(child, f"{prefix}.{child.name}")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}.{child.name}")
        else:
            yield from _functions(child, prefix)


def _size_violations() -> list[str]:
    """``"<module or function>: <what>"`` for every module, function or signature over the limits."""
    found = []
    for name, tree in TREES.items():
        lines = len(MODULES[name].read_text().splitlines())
        if lines >= MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for qualified, fn in _functions(tree, name):
            length = fn.end_lineno - fn.lineno + 1
            if length >= MAX_FUNCTION_LINES:
                found.append(f"{qualified}: {length} lines")
            if _parameter_count(fn) > MAX_PARAMETERS:
                found.append(f"{qualified}: {_parameter_count(fn)} parameters")
    return sorted(found)


def test_sizes():
    found = _size_violations()
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", ["mobilecnn.models.registry", "mobilecnn.runs.rundir", "mobilecnn.train.config"])
def test_known_former_cycles_stay_open(name):
    # models <-> runs and train.config -> finetune -> optim -> config were cycles once
    reachable, todo = set(), [name]
    while todo:
        for t in GRAPH[todo.pop()]:
            if t not in reachable:
                reachable.add(t)
                todo.append(t)
    assert name not in reachable
