"""No import points up the layers of the architecture (../shared/docs/architecture.md), from the
bottom: the core (`stc/` without `stc.cli`: torch only, never transformers or argparse) < adapters
(`stc.integrations.adapters` and the modules beside them) < the engine (`stc.integrations.engine`)
< the demo (`stc.integrations.demo`) < the server (`stc.integrations.serve`) < evaluation (`stc.eval`)
< the CLI (`stc.cli`), which nothing imports. Function-level imports count too."""

import ast
from pathlib import Path

import pytest

from stc.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"stc": ROOT / "stc", "stc.integrations": ROOT / "integrations", "stc.eval": ROOT / "eval"}
# command-line entry points (`python -m ...`): the CLI layer by role, wherever they live
ENTRY_POINTS = {"stc.__main__", "stc.eval.__main__"}
LAYERS = ("core", "stc.integrations", "stc.integrations.engine", "stc.integrations.demo", "stc.integrations.serve",
          "stc.eval", "stc.cli")
NEVER_IN_CORE = ("transformers", "argparse")


def layer_of(name: str) -> str:
    if name == "stc.cli" or name.startswith("stc.cli.") or name in ENTRY_POINTS:
        return "stc.cli"
    for layer in reversed(LAYERS[1:]):
        if name == layer or name.startswith(layer + "."):
            return layer
    return "core"


def modules():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            name = ".".join([package, *path.relative_to(folder).with_suffix("").parts])
            yield layer_of(name.removesuffix(".__init__")), name.removesuffix(".__init__"), path


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


def is_stc(module: str) -> bool:
    return module == "stc" or module.startswith("stc.")


@pytest.mark.parametrize("layer, name, path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_import_points_up(layer, name, path):
    rank = LAYERS.index(layer)
    upward = sorted(i for i in imported(name, path) if is_stc(i) and LAYERS.index(layer_of(i)) > rank)
    assert not upward, f"{name} ({layer}) imports {upward}"
    if layer == "core":
        banned = sorted(i for i in imported(name, path) for bad in NEVER_IN_CORE if i == bad or i.startswith(bad + "."))
        assert not banned, f"{name} is core and imports {banned}"


def test_the_rule_sees_relative_and_function_level_imports(tmp_path):
    module = tmp_path / "engine.py"
    module.write_text("def f():\n    from ..eval.testbed import TESTBED_DIR\n    import transformers\n")
    assert imported("stc.integrations.engine", module) == {"stc.eval.testbed", "transformers"}


def test_layers_of_names():
    assert layer_of("stc.config") == "core" and layer_of("stc.cacher.plan") == "core"
    assert layer_of("stc.cli.eval") == "stc.cli" and layer_of("stc.eval.__main__") == "stc.cli"
    assert layer_of("stc.integrations.adapters.qwen_vl") == "stc.integrations"
    assert layer_of("stc.integrations.engine.session") == "stc.integrations.engine"
    assert layer_of("stc.cli.gpu_bench") == "stc.cli"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_registry_targets_point_down(model_type):
    """The core's family table names adapters (one layer up, imported by name at patch time only)."""
    target = FAMILIES[model_type].adapter
    module = target.split(":")[0]
    assert layer_of(module) == "stc.integrations" and module.startswith("stc.integrations.adapters.")
