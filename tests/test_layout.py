"""segkit's layout: sub-packages by role, each importing only the packages below it.

Every ``import`` of a ``segkit`` module is read with :mod:`ast` (function-level imports
included, so a lazy import cannot hide an upward dependency) and checked against
:data:`LAYERS`; the package graph must have no circle, and ``segkit/`` holds no module
beside those of :data:`ROOT_MODULES`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import PROJECT_ROOT

SEGKIT = PROJECT_ROOT / "segkit"
# Bottom first. A package may import its own modules and those of any lower layer; the
# packages of one layer (data, models) do not import each other. "segkit" is the root:
# the modules of ROOT_MODULES.
LAYERS = (
    ("segkit",),
    ("data", "models"),
    ("evaluation",),
    ("tasks",),
    ("engine",),
    ("deploy",),
    ("cli",),
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
# The root modules every layer may import: the package, its configs (config.py,
# config_values.py) and the rule that nothing segkit writes replaces a user's file (outputs.py).
ROOT_MODULES = {"__init__.py", "config.py", "config_values.py", "outputs.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """``segkit.tasks.losses`` -> ``tasks``; ``segkit`` and ``segkit.config`` -> ``segkit``."""
    parts = module.split(".")
    if len(parts) == 1 or (SEGKIT / f"{parts[1]}.py").is_file():
        return "segkit"
    return parts[1]


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of the checkout (not a name inside one)."""
    path = PROJECT_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def segkit_imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every segkit module that ``path`` imports, at any depth.

    ``package`` (for relative imports): the package ``path`` lies in, by default found from
    its place in the checkout.
    """
    if package is None:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                module = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [module])])
            # `from segkit.data import checks` imports the module segkit.data.checks
            targets = [
                f"{module}.{alias.name}" if is_module(f"{module}.{alias.name}") else module
                for alias in node.names
            ]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t == "segkit" or t.startswith("segkit.")]
    return found


def modules() -> list[Path]:
    return sorted(p for p in SEGKIT.rglob("*.py") if "conf" not in p.relative_to(SEGKIT).parts)


def test_every_package_has_a_layer():
    packages = {package_of(module_name(path)) for path in modules()}
    assert packages == set(RANK)


def test_no_package_imports_a_higher_or_sibling_package():
    wrong = []
    for path in modules():
        source = package_of(module_name(path))
        for line, target in segkit_imports(path):
            package = package_of(target)
            if package != source and RANK[package] >= RANK[source]:
                where = path.relative_to(PROJECT_ROOT)
                wrong.append(f"{where}:{line} ({source}) imports {target} ({package})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (a list of nodes, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for following in sorted(graph.get(node, ())):
            if state.get(following) == 1:
                return [*path[path.index(following) :], following]
            if following not in state:
                found = visit(following, [*path, following])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_circle_between_packages_or_modules():
    packages: dict[str, set[str]] = {}
    module_graph: dict[str, set[str]] = {}
    for path in modules():
        name = module_name(path)
        targets = {target for _, target in segkit_imports(path)} - {name}
        module_graph[name] = targets
        packages.setdefault(package_of(name), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(name)
        )
    assert _circle(packages) is None, _circle(packages)
    assert _circle(module_graph) is None, _circle(module_graph)


def test_the_root_holds_only_the_root_modules():
    names = {p.name for p in SEGKIT.glob("*.py")}
    assert {"__init__.py", "config.py", "outputs.py"} <= names <= ROOT_MODULES, sorted(names)


def test_the_check_finds_an_upward_and_a_circular_import(tmp_path):
    """The walker itself: a function-level import is found, and a circle is reported."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from segkit.cli.check_data import main\n")
    assert segkit_imports(source, "segkit.data") == [(2, "segkit.cli.check_data")]
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": {"c"}}) is None
