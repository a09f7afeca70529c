"""The package's layers point one way: the core never imports a command, and no two modules import
each other, directly or around a loop (imports inside functions count too: they are dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# where each part of the package lives on disk (setup.py's package_dir)
TREES = {"fundus2video": ROOT / "src" / "fundus2video", "fundus2video.data_modules": ROOT / "data_modules",
         "fundus2video.callbacks": ROOT / "callbacks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in TREES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (anywhere in the file)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            # `from fundus2video import hub` names a module; `from fundus2video.io import atomic_path` its module
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "fundus2video":
                out.add(target)
    return out


GRAPH = {name: _imports(path, name, set(_modules())) for name, path in _modules().items()}


def test_the_core_never_imports_a_command():
    # `python -m fundus2video` (__main__) is the command line's entry point
    entry = ("fundus2video.commands", "fundus2video.__main__")
    offenders = [f"{name} imports {dep}" for name, deps in GRAPH.items() if not name.startswith(entry)
                 for dep in deps if dep.startswith("fundus2video.commands")]
    assert not offenders, offenders


def test_no_import_cycle():
    # the package __init__s only re-export their own submodules
    graph = {n: {d for d in deps if not (GRAPH.get(d) is not None and _is_parent(d, n))} for n, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _is_parent(package: str, module: str) -> bool:
    return module.startswith(package + ".")


@pytest.mark.parametrize("name", ["method", "kba", "kad", "patchnce", "knowledge", "rollout"])
def test_each_idea_has_its_file(name):
    files = {"method": "module.py", "kba": "losses/kba.py", "kad": "losses/kad.py", "patchnce": "losses/patchnce.py",
             "knowledge": "knowledge.py", "rollout": "rollout.py"}
    assert (TREES["fundus2video"] / files[name]).is_file()
    assert "class KnowledgeAwareDiscriminator" in (TREES["fundus2video"] / "networks/discriminator.py").read_text()
    assert "def scheduled_previous" in (TREES["fundus2video"] / "rollout.py").read_text()


# the command line's own tests, which check the README's command lines against the real parsers
CLI_TESTS = {"test_readme.py"}


def test_tests_reach_the_commands_through_the_command_line_only():
    """Tests use the library (core, training, studies, ...) directly and a command only through
    `fundus2video.commands.cli` (main, build_parser), as a user would."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name in CLI_TESTS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("fundus2video", "fundus2video.commands"):
                names = [f"{node.module}.{a.name}" for a in node.names]  # `from fundus2video.commands import cli`
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)} imports {n}" for n in names
                          if n.startswith("fundus2video.commands") and n != "fundus2video.commands.cli"]
    assert not offenders, offenders
