"""UI → core, never core → UI: the core never imports streamlit, and only posterlab.demo imports gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import posterlab

PACKAGE = Path(posterlab.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_ui_libraries():
    for path in PACKAGE.rglob("*.py"):
        if "space_template" in path.parts:
            continue
        names = _imports(path)
        assert "streamlit" not in names, f"{path} imports streamlit"
        if path.name != "demo.py":
            assert "gradio" not in names and "gradio_client" not in names, f"{path} imports gradio"


def test_importing_the_core_loads_no_ui():
    code = (
        "import sys, posterlab.cli, posterlab.inference, posterlab.explain, posterlab.training.trainer, "
        "posterlab.training.manager, posterlab.evaluation.interpret, posterlab.evaluation.figures, posterlab.data.stats\n"
        "print(sorted(m for m in ('streamlit', 'gradio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_demo_serves_before_torch_is_imported():
    """``posterlab demo`` lays out and serves the page while the model loads: its module needs no torch."""
    code = "import sys, posterlab.demo\nprint(sorted(m for m in ('torch', 'timm', 'sklearn') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _calls_timm_create_model(path: Path) -> bool:
    """A call of ``timm.create_model`` (not the words in a docstring or a model card's snippet)."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "create_model"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "timm"
        for node in ast.walk(ast.parse(path.read_text()))
    )


def test_timm_create_model_has_one_caller():
    callers = [
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if _calls_timm_create_model(p)
    ]
    assert callers == ["models/factory.py"]
