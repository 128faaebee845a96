"""The layering of docs/architecture.md, checked on every import statement in src/emovec."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "emovec"

#: Rank of each top-level part of the package: a module may import ranks <= its own.
SERVICES = {"errors", "files", "generation", "scoring", "stats", "openai_compat", "progress"}
CORE = {
    "catalog",
    "corpus",
    "models",
    "hooks",
    "extraction",
    "vectors",
    "reading",
    "steering",
    "activation_cache",
}
FEATURES = {
    "monitor",
    "studies",
    "authoring",
    "experiments",
    "sharding",
    "llama_cpp",
    "corpus_checks",
    "sandbox",
}
#: Old import paths of front ends that moved into emovec.apps (thin re-exports).
APPS = {"apps", "api_server", "chat_server", "report", "web_guard"}
RANK = {**dict.fromkeys(SERVICES | CORE, 0), **dict.fromkeys(FEATURES, 1), **dict.fromkeys(APPS, 2)}
SHIMS = {"__init__", "__main__"}  # the package root re-exports from every layer


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found.append((".".join(("emovec", *parts)), path))
    return found


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[0] == "emovec" else None


def imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text("utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [alias.name for alias in node.names], node.lineno))
    return out


def test_every_top_level_part_has_a_layer():
    parts = {part_of(m) for m, _ in modules()} - SHIMS
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to a layer in this test"


def violations(module: str, path: Path) -> list[str]:
    """Imports of ``module`` that point up a layer or at another module's private names."""
    own = part_of(module)
    if own in SHIMS:
        return []
    problems = []
    for target, names, line in imports(path, module):
        other = part_of(target)
        if other is None or other in SHIMS:
            continue
        if RANK[other] > RANK[own]:
            problems.append(f"line {line}: {own} (rank {RANK[own]}) imports {target}")
        if target != module:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"line {line}: imports private {private} from {target}")
    return problems


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda x: str(x))
def test_imports_point_down_and_never_at_private_names(module, path):
    problems = violations(module, path)
    assert not problems, f"{path.relative_to(SRC)}: " + "; ".join(problems)


def test_the_check_catches_an_upward_and_a_private_import(tmp_path):
    bad = tmp_path / "steering.py"
    bad.write_text(
        "from emovec.monitor import LiveMonitor\n"
        "def f():\n    from emovec.reading import _helper\n"
        "from . import scoring\n"
    )
    problems = violations("emovec.steering", bad)
    assert len(problems) == 2, problems
    assert "imports emovec.monitor" in problems[0] and "_helper" in problems[1]
