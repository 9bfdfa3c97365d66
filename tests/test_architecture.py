"""The one rule between the layers: imports point toward the pure core (docs/architecture.md).

Layers, from the bottom: ``core`` (pure), ``edges`` (I/O), ``ops``, ``face``, then the command line.
The push/pull tool (``libclient``) stands apart: it imports nothing of the gateway but its version.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"
RANK = {"core": 0, "edges": 1, "ops": 2, "face": 3, "cli": 4, "__main__": 4, "__init__": 0}
PURE_CORE_MAY_NOT_IMPORT = {"aiohttp", "asyncio", "socket", "ssl", "yarl", "multidict"}


def layer_of(module: str) -> str:
    """``gateway.edges.s3.client`` -> ``edges``; ``gateway.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path) -> list[str]:
    """Every module named by an import in the file, relative imports resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def wrong_way_imports() -> list[str]:
    known = modules()
    wrong = []
    for module, path in known.items():
        here = layer_of(module)
        for name in imports_of(module, path):
            if name not in known or not name.startswith("gateway."):
                continue
            there = layer_of(name)
            if here == "libclient":
                if there not in {"libclient", "__init__"}:
                    wrong.append(f"{module} -> {name} (the push/pull tool imports only gateway's version)")
            elif there == "libclient":
                if here != "cli":
                    wrong.append(f"{module} -> {name} (only the command line runs the push/pull tool)")
            elif RANK[there] > RANK[here]:
                wrong.append(f"{module} ({here}) -> {name} ({there})")
    return wrong


def test_imports_point_toward_the_pure_core() -> None:
    assert wrong_way_imports() == []


@pytest.mark.parametrize("module", sorted(m for m in modules() if layer_of(m) == "core"))
def test_the_core_does_no_io(module: str) -> None:
    imported = {name.split(".")[0] for name in imports_of(module, modules()[module])}
    assert imported.isdisjoint(PURE_CORE_MAY_NOT_IMPORT), imported & PURE_CORE_MAY_NOT_IMPORT


def test_the_rule_is_checked_on_every_module() -> None:
    layers = {"__init__", "__main__", "cli", "core", "edges", "ops", "face", "libclient"}
    assert {layer_of(m) for m in modules()} == layers
    assert len(modules()) > 40  # a moved tree that this test cannot see would pass vacuously
