"""No test asserts something about two constants (it would pass whatever the code does):
every comparison in an assert has at least one side computed by the test."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _constant(node: ast.expr) -> bool:
    """A literal, an UPPER_CASE name, or Module.UPPER_CASE (or a tuple/list of those)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper()
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr.isupper() and not node.value.id[0].islower()
    if isinstance(node, ast.Tuple | ast.List):
        return all(_constant(e) for e in node.elts)
    return False


def test_no_assertion_compares_two_constants() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
                sides = [node.test.left, *node.test.comparators]
                if any(_constant(a) and _constant(b) for a, b in itertools.pairwise(sides)):
                    found.append(
                        f"{path.relative_to(TESTS)}:{node.lineno}: {ast.unparse(node.test)}"
                    )
    assert found == [], "\n".join(found)
