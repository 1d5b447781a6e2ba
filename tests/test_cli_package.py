"""The CLI package's shape: subcommands added only when chosen, library modules that never import
the CLI, report independent of the runner, and checkpoint conversion that names no editor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_list_imports_no_torch():
    """Only the chosen subcommand's options are built: train-editor's help lists the learned
    editors (importing torch), which `mmke-eval list` must not wait for."""
    code = "import sys; from mmke_eval.cli import main; main(['list']); print('torch' in sys.modules, file=sys.stderr)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert run.stderr.strip().splitlines()[-1] == "False"
    assert "tasks and groups:" in run.stdout


def test_the_library_never_imports_the_cli_and_report_never_the_runner():
    for path in sorted([*(REPO / "mmke_eval").rglob("*.py"), *(REPO / "editors").rglob("*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("mmke_eval/cli/", "mmke_eval/testing/")):  # testing/dp_worker runs the command
            continue
        modules = imported_modules(path)
        assert not any(m == "mmke_eval.cli" or m.startswith("mmke_eval.cli.") for m in modules), rel
        if rel.startswith("mmke_eval/report/"):
            assert "mmke_eval.runner" not in modules, rel


def test_checkpoint_conversion_names_no_editor():
    """Each editor owns its reference format: the generic conversion code holds no editor's name."""
    from mmke_eval import registry

    names = set(registry.editor_names())
    for path in [*(REPO / "mmke_eval" / "reference").glob("*.py"), REPO / "mmke_eval" / "cli" / "convert.py"]:
        strings = {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & names, (path.name, strings & names)
