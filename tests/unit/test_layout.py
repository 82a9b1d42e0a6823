"""The layout's arrows, read from the import statements of every .py file: tests and scripts ->
devtools -> service, never back; scripts are entry points over devtools."""

from __future__ import annotations

import ast
import importlib.util
import runpy
import sys
from functools import cache
from pathlib import Path

import pytest

from devtools.sets import REPO_ROOT

FIRST_PARTY = ("service", "devtools", "tests", "scripts")
# What each top-level package may import of the others.
ALLOWED = {
    "service": {"service"},
    "devtools": {"devtools", "service"},
    "tests": {"tests", "devtools", "service"},
    "scripts": {"devtools"},
}


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imported(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, absolute module name) of every import in the file, relative ones resolved, lazy
    imports inside functions and under TYPE_CHECKING included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found.append((node.lineno, base))
            # `from package import module` names a module too; it must resolve like one.
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
    return tuple(found)


def first_party(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in FIRST_PARTY else None


@pytest.mark.parametrize("package", list(ALLOWED))
def test_imports_run_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for path in python_files(package)
        for line, name in imported(path)
        if (top := first_party(name)) is not None and top not in ALLOWED[package]
    ]
    assert python_files(package)
    assert wrong == []


def test_every_first_party_import_resolves() -> None:
    """mypy ignores missing imports (for third-party packages without stubs), so a module moved
    without its importers would go unnoticed until run."""

    def resolves(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    missing = []
    for package in FIRST_PARTY:
        for path in python_files(package):
            for line, name in imported(path):
                if first_party(name) is None or resolves(name):
                    continue
                parent, _, attribute = name.rpartition(".")
                # `from module import name` where name is a function or class, not a module.
                if parent and resolves(parent) and _defines(parent, attribute):
                    continue
                missing.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {name}")
    assert missing == []


def _defines(module: str, attribute: str) -> bool:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return attribute in names


def test_scripts_are_entry_points_over_devtools() -> None:
    """A script's Python is a docstring, one import of a devtools `main` and the call of it."""
    thick = []
    for path in python_files("scripts"):
        if path.name == "__init__.py":
            continue
        names = [name for _, name in imported(path)]
        if not names or not all(n.startswith("devtools.") for n in names) or not names[-1].endswith(".main"):
            thick.append(f"{path.relative_to(REPO_ROOT)} imports {names}")
    assert thick == []


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.stem for p in python_files("scripts") if p.name != "__init__.py"))
def test_every_script_answers_help_without_starting_work(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` prints the usage and exits 0; no script may ignore its arguments and start a study.
    Run as its file is run, in this process: a new interpreter per script spent most of this test
    importing torch again. (By path: pytest would take `crash_test` for a test module to rewrite.)"""
    monkeypatch.setattr(sys, "argv", [f"scripts/{script}.py", "--help"])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(REPO_ROOT / "scripts" / f"{script}.py"), run_name="__main__")
    printed = capsys.readouterr()
    assert ended.value.code in (0, None) and printed.out.startswith("usage:"), (
        printed.out[-500:] + printed.err[-2000:]
    )
