"""Structure of ``model/``, checked from the source with ``ast``: no module of ``model/`` or
``service/`` reaches into another class's private members (nor a base class's), and callers ask
a model what it can do instead of testing its class.
(Import cycles among the modules of ``model/`` and ``service/``: ``tests/test_structure.py``.)"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "model"
# The private-member rule holds for the service too; the other checks here are about model/.
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "service").rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def external_names(tree: ast.Module) -> set[str]:
    """Names bound by imports from outside the project (``torch``, ``nn``, ...): their private
    members are the library's business, not a class of ours."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if not a.name.startswith("model")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("model"):
            names |= {a.asname or a.name for a in node.names}
    return names


def own_members(cls: ast.ClassDef) -> set[str]:
    """What a class defines itself: its methods, class attributes and ``self.x = ...`` attributes."""
    members = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            members.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                members.add(node.attr)
    for node in cls.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        members |= {t.id for t in targets if isinstance(t, ast.Name)}
    return members


def private_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """Uses of ``x._name`` that reach into another object's or another class's private members.

    Allowed: ``self._name`` / ``cls._name`` where the enclosing class defines ``_name`` itself (not
    a base class's private method), and private members of external libraries.
    """
    external = external_names(tree)
    found = []

    def visit(node: ast.AST, members: set[str] | None) -> None:
        if isinstance(node, ast.ClassDef):
            members = own_members(node)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                if members is None or node.attr not in members:
                    found.append((node.lineno, f"{receiver.id}.{node.attr} is not defined by its own class"))
            elif not (isinstance(receiver, ast.Name) and receiver.id in external):
                found.append((node.lineno, f"{ast.unparse(receiver)}.{node.attr}"))
        for child in ast.iter_child_nodes(node):
            visit(child, members)

    visit(tree, None)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_another_class_private_members(path):
    assert private_uses(parse(path)) == []


def test_the_private_use_check_catches_what_it_should():
    source = """
import torch
class Base:
    def _helper(self): ...
class Child(Base):
    def run(self, other):
        self._own()
        self._helper()
        other._helper()
        torch._standard_gamma(1)
    def _own(self): ...
"""
    found = [what for _, what in private_uses(ast.parse(source))]
    assert found == ["self._helper is not defined by its own class", "other._helper"]


def test_callers_ask_a_model_what_it_can_do_instead_of_testing_its_class():
    pattern = re.compile(r"isinstance\([^)]*CMANPAND|type\([^)]*\) is CMANP")
    hits = [
        f"{path.relative_to(ROOT)}:{i}"
        for folder in ("model", "service", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
