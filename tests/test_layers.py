"""The import layers written in feedlearn's package docstring hold: no module imports from a higher
layer, or from another package of its own layer, and every module belongs to a layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import feedlearn

PACKAGE = Path(feedlearn.__file__).parent


def layers() -> dict[str, int]:
    """Top-level package or module name -> its layer, read from the package docstring."""
    found = {}
    for number, names in re.findall(r"^\s*layer (\d+): ((?:[a-z_]+ )*[a-z_]+)", feedlearn.__doc__, re.M):
        for name in names.split():
            found[name] = int(number)
    return found


def top(module: str) -> str:
    """`feedlearn.data.store` -> `data`."""
    return module.split(".")[1]


def imports(path: Path) -> set[str]:
    """The feedlearn modules a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("feedlearn."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("feedlearn."))
    return found


def modules() -> dict[str, Path]:
    return {
        "feedlearn." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent != PACKAGE
    }


def test_every_module_has_a_layer():
    known = layers()
    assert {top(m) for m in modules()} <= set(known), set(map(top, modules())) - set(known)


def violations(files: dict[str, Path]) -> list[str]:
    """Each import of a module (name -> file) into a higher layer or another package of its own layer."""
    known = layers()
    wrong = []
    for module, path in files.items():
        for imported in imports(path):
            mine, theirs = top(module), top(imported)
            if mine != theirs and known[theirs] >= known[mine]:
                wrong.append(f"{module} (layer {known[mine]}) imports {imported} (layer {known[theirs]})")
    return wrong


def test_no_module_imports_upward_or_sideways():
    wrong = violations(modules())
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_upward_and_sideways_imports(tmp_path):
    known = layers()
    assert (
        known["errors"] == 1 and known["cli"] == max(known.values()) and known["methods"] > known["training"]
    )
    upward = tmp_path / "upward.py"
    upward.write_text("def f():\n    from feedlearn.report import print_results\n", encoding="utf-8")
    sideways = tmp_path / "sideways.py"
    sideways.write_text("from feedlearn.judges.pairwise import JudgeLabeler\n", encoding="utf-8")
    own = tmp_path / "own.py"
    own.write_text(
        "from feedlearn.methods.common import Method\nfrom feedlearn.data import jsonl\n", encoding="utf-8"
    )
    found = violations(
        {"feedlearn.methods.x": upward, "feedlearn.teachers.x": sideways, "feedlearn.methods.y": own}
    )
    assert found == [
        "feedlearn.methods.x (layer 12) imports feedlearn.report (layer 13)",
        "feedlearn.teachers.x (layer 9) imports feedlearn.judges.pairwise (layer 9)",
    ]
