"""The package's layers: a lower layer never imports a higher one.

Imports are read from the source with `ast`, function-level ones included, so a lazy import
that crosses a layer is caught as surely as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tuneforge

PACKAGE = Path(tuneforge.__file__).parent

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    {"fsutil", "auto", "memory"},
    {"data"},
    {"tokenize"},
    {"modeling"},
    {"training"},
    {"evaluation"},
    {"inference"},
    {"jobs"},
    {"server"},
    {"cli"},
    {"demo"},
    {"docgen", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tuneforge" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from tuneforge import cli` names the layer in the alias.
            if node.module == "tuneforge":
                found += [(node.lineno, f"tuneforge.{alias.name}") for alias in node.names]
    return found


def _module_layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_layer() -> None:
    unknown = {
        _module_layer(path)
        for path in PACKAGE.rglob("*.py")
        if _module_layer(path) not in RANK and _module_layer(path) != "__init__"
    }
    assert not unknown, f"modules outside the layer map: {sorted(unknown)}"


def test_no_layer_imports_a_higher_one() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _module_layer(path)
        if own == "__init__":
            continue
        for line, module in _imports(path):
            target = _layer(module)
            if target is None or target not in RANK or target == own:
                continue
            if RANK[target] > RANK[own]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not violations, "\n".join(violations)
