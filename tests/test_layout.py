"""The worker packages' import rule, read from the source (no imports run, so it is instant).

The runtime imports no model package; a model package imports only the runtime, its own modules
and, for llama4's rag_chat, rag's grounding. The tiny builders, the two CLIs and the demo's
prefork host (which runs the worker CLI) are where the parts are put together, so they may
import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

WORKERS = Path(__file__).resolve().parents[1] / "workers"
MODEL_PACKAGES = ("sd3", "llama4", "rag")
ALLOWED_BEYOND_OWN = {
    "llama4": {"workers.rag.grounding"},
    # clip="tiny" makes an index carry its own tiny CLIP (for tests and the demo): built on
    # demand, imported only then.
    "rag": {"workers.tiny.clip"},
}


def worker_imports(path: Path) -> set[str]:
    """The workers.* modules a source file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from workers.rag import grounding` imports the module workers.rag.grounding;
            # `from workers.rag.index import RagIndex` imports workers.rag.index.
            found |= {
                f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                for a in node.names
            }
    return {name for name in found if name.startswith("workers.")}


def is_module(name: str) -> bool:
    parts = name.split(".")
    return WORKERS.joinpath(*parts[1:]).with_suffix(".py").is_file() or (
        WORKERS.joinpath(*parts[1:], "__init__.py").is_file()
    )


def test_the_runtime_imports_no_model_package():
    for path in (WORKERS / "runtime").glob("*.py"):
        for name in worker_imports(path):
            assert name.startswith("workers.runtime"), f"{path.name} imports {name}"


def test_a_model_package_imports_only_the_runtime_and_itself():
    for package in MODEL_PACKAGES:
        allowed = ALLOWED_BEYOND_OWN.get(package, set())
        for path in (WORKERS / package).glob("*.py"):
            for name in filter(is_module, worker_imports(path)):
                ok = (name.startswith(("workers.runtime", f"workers.{package}"))
                      or name in allowed)
                assert ok, f"workers/{package}/{path.name} imports {name}"


def test_no_worker_module_is_left_at_the_top_level():
    top = {path.name for path in WORKERS.glob("*.py")}
    assert top == {"__init__.py", "cli.py", "index_cli.py", "noop.py", "prefork.py"}
