"""The package's shape: modules import each other in layers, never in a circle.

Imports are read from the source (module level and inside functions alike: a cycle through a
function-level import is still a cycle, only a later one); imports under ``if TYPE_CHECKING:``
are type hints and do not run, so they do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flowerfast"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import nodes, skipping ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level == 0:
                    module = node.module
                else:
                    anchor = base[: len(base) - (node.level - 1)]
                    module = ".".join(anchor + ([node.module] if node.module else []))
                subs = [f"{module}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in files]
                if len(targets) < len(subs):  # a name that is not a submodule: the module itself
                    targets.append(module)
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "flowerfast.models.archs" in graph["flowerfast.models.classifier"]  # module level
    assert "flowerfast.training.lr_find" in graph["flowerfast.training.run"]  # inside train()


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's length: its docstring and statements. The signature is not counted: the
    formatter writes a long one a parameter per line, and a parameter list hides no step."""
    return node.end_lineno - node.body[0].lineno + 1


def long_functions(tree: ast.AST, limit: int) -> list[tuple[str, int]]:
    """Functions (methods and nested ones too) whose body is longer than ``limit`` lines."""
    return [
        (node.name, body_lines(node))
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > limit
    ]


def test_the_size_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    signature = "def f(\n" + "".join(f"    a{i},\n" for i in range(20)) + "):\n"
    assert long_functions(ast.parse(f"{signature}{body}\n"), MAX_FUNCTION_LINES) == [("f", MAX_FUNCTION_LINES + 1)]
    assert long_functions(ast.parse(f"{signature}    pass\n"), MAX_FUNCTION_LINES) == []


def test_no_module_or_function_is_too_long():
    """A module past 400 lines holds more than one concept; a function past 60 hides the steps
    that should have names of their own."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{module_name(path)}: {lines} lines")
        problems += [
            f"{module_name(path)}.{name}: {n} lines" for name, n in long_functions(ast.parse(text), MAX_FUNCTION_LINES)
        ]
    assert not problems, "too long: " + "; ".join(problems)


def test_every_name_of_the_public_api_resolves():
    """``flowerfast.NAME`` for every name in ``__all__``, each from the module the table names: a
    name left behind when a module moves fails here, not in a user's script."""
    import flowerfast

    for name in flowerfast.__all__:
        value = getattr(flowerfast, name)
        if name != "__version__":
            assert value.__module__ == f"flowerfast.{flowerfast._EXPORTS[name]}", name
