"""Structure of ``model/`` and ``service/``, checked from the source with ``ast``: their modules
import each other without cycles, and the service's domain modules (store, kinds, calibration,
transforms, the inference machinery) never reach the wire schemas or the web framework: those
stay at the edge (routers, app, problems)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "service")
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))

# The service's domain: what a session is and how its model work runs, whatever the transport.
DOMAIN = (
    "service.batcher",
    "service.calibration",
    "service.errors",
    "service.fold_process",
    "service.folded_states",
    "service.inference",
    "service.kinds",
    "service.registry",
    "service.store",
    "service.text",
    "service.training_range",
    "service.transforms",
)
EDGE = ("service.schemas", "service.problems", "service.routers", "service.dependencies", "service.app")
WEB_FRAMEWORKS = ("fastapi", "starlette", "pydantic")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def in_any(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported_names(name: str, tree: ast.Module) -> set[str]:
    """Every module name that module ``name`` imports, anywhere in its body (relative ones resolved;
    ``from a.b import c`` names ``a.b.c`` where that is one of ours, else ``a.b``)."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours each imports."""
    graph = {}
    for name, path in MODULES.items():
        names = imported_names(name, ast.parse(path.read_text(), filename=str(path)))
        graph[name] = {n for n in names if n in MODULES and n != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, str] = {}  # "visiting" or "done"
    found = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "visiting"
        for dep in sorted(graph[name]):
            if state.get(dep) == "visiting":
                found.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports directly or through others, with one import path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        name = todo.pop()
        for dep in sorted(graph[name]):
            if dep not in paths:
                paths[dep] = [*paths[name], dep]
                todo.append(dep)
    return paths


def test_no_import_cycles_among_the_modules_of_model_and_service() -> None:
    graph = import_graph()
    assert cycles(graph) == []
    # The parser sees real edges, so the checks above and below can fail.
    assert graph["model.cmanp_and"] >= {"model.cmanp", "model.heads"}
    assert graph["service.routers.regression"] >= {"service.kinds.regression", "service.schemas"}


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a -> b -> c -> a"]


def test_the_domain_modules_reach_neither_the_wire_schemas_nor_the_web_framework() -> None:
    graph = import_graph()
    domain = [name for name in MODULES if in_any(name, DOMAIN)]
    assert "service.kinds.regression" in domain and "service.store" in domain
    leaks = []
    for name in domain:
        for reached, path in reachable(graph, name).items():
            if in_any(reached, EDGE):
                leaks.append(" -> ".join(path))
        path_of = MODULES[name]
        frameworks = {n for n in imported_names(name, ast.parse(path_of.read_text())) if in_any(n, WEB_FRAMEWORKS)}
        leaks += [f"{name} imports {n}" for n in sorted(frameworks)]
    assert leaks == []


def test_every_service_module_is_either_domain_or_edge_or_plumbing() -> None:
    """A new module must be placed deliberately: a domain module is checked above."""
    plumbing = {
        "service",
        "service.__main__",
        "service.body_limit",
        "service.bundled_redis",
        "service.client",
        "service.embedded_redis",
        "service.logs",
        "service.metrics",
        "service.parent_death",
        "service.quota",
        "service.rate_limit",
        "service.settings",
        "service.workers",
    }
    service = [name for name in MODULES if name.startswith("service")]
    assert [n for n in service if not (in_any(n, DOMAIN) or in_any(n, EDGE) or n in plumbing)] == []
