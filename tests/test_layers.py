"""No import points up the layers of the architecture (../shared/docs/architecture.md):
core (`stc/`) < adapters and engine (`stc.integrations`) < evaluation (`stc.eval`) < the CLI
(`stc.cli`, `stc.commands`). Function-level imports count too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"stc": ROOT / "stc", "stc.integrations": ROOT / "integrations", "stc.eval": ROOT / "eval"}
CLI = ("stc.cli", "stc.commands")
# command-line entry points (`python -m ...`): the CLI layer by role, wherever they live
ENTRY_POINTS = {"stc.__main__", "stc.eval.__main__", "stc.eval.gpu_bench"}
FORBIDDEN = {
    "core": ("transformers", "stc.integrations", "stc.eval", *CLI),
    "stc.integrations": ("stc.eval", *CLI),
    "stc.eval": CLI,
}


def modules():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            name = ".".join([package, *path.relative_to(folder).with_suffix("").parts])
            if name in ENTRY_POINTS or name == "stc.cli" or name.startswith("stc.commands"):
                continue  # the CLI layer may import everything
            yield ("core" if package == "stc" else package), name, path


def imported(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
    return found


@pytest.mark.parametrize("layer, name, path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_import_points_up(layer, name, path):
    upward = sorted(i for i in imported(name, path) for bad in FORBIDDEN[layer] if i == bad or i.startswith(bad + "."))
    assert not upward, f"{name} ({layer}) imports {upward}"


def test_the_rule_sees_relative_and_function_level_imports(tmp_path):
    module = tmp_path / "engine.py"
    module.write_text("def f():\n    from ..eval.testbed import TESTBED_DIR\n    import transformers\n")
    assert imported("stc.integrations.engine", module) == {"stc.eval.testbed", "transformers"}
