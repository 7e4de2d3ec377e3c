"""docs/GUARANTEES.md names, for every promise, the tests that prove it: each name must exist.

A renamed or deleted test would otherwise leave a promise that nothing proves while the page
still says it is proven. Names are read as ``path::name`` or ``path::Class::name``; a name may
be a function, a class, or a module-level assignment (hypothesis's ``Machine.TestCase``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:::(\w+))?`")


def defined_names(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_proof_named_in_the_guarantees_exists() -> None:
    text = (ROOT / "docs" / "GUARANTEES.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 100, "the page lost its proofs, or the reference form changed"
    missing = []
    for path, name, member in references:
        source = ROOT / path
        if not source.exists():
            missing.append(f"{path} (no such file)")
            continue
        names = defined_names(source)
        for wanted in (name, member):
            if wanted and wanted not in names:
                missing.append(f"{path}::{wanted}")
    assert not missing, f"GUARANTEES.md names tests that do not exist: {missing}"


def test_the_readme_links_the_guarantees() -> None:
    assert "docs/GUARANTEES.md" in (ROOT / "README.md").read_text()
