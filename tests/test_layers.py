"""The packages' arrows point down (../shared/design.md): none of them imports the composition layer."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("feedback", "serving", "plugins", "bot", "trainer")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_package_imports_tuneloop():
    offenders = [f"{path.relative_to(ROOT)}: {module}"
                 for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                 for module in imported_modules(path) if module == "tuneloop" or module.startswith("tuneloop.")]
    assert offenders == []


def test_plugins_are_told_no_secrets_and_no_database():
    from plugins.config import PluginSettings

    names = {field.name for field in fields(PluginSettings)}
    assert not {name for name in names if name.startswith("slack_") or "token" in name or "secret" in name}
    assert "database_url" not in names
