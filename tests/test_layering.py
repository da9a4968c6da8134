"""Imports run down the layers only: a module may import from a lower layer or from its own package."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dpsearch"

# Lowest first. A new top-level module must be placed here (the test fails until it is).
LAYERS = [
    {"paths", "device", "config", "outputs", "errors"},
    {"space", "storage", "data", "models", "services", "fingerprints", "classifiers"},
    {"checkpoints", "privacy", "warmup"},
    {"shipped", "finetune_state"},
    {"pretrain", "sample", "evaluate", "finetune", "sweep_store"},
    {"protocol", "synthetic_release", "inputs"},
    {"pipeline"},
    {"trial", "baseline", "html_report"},
    {"tracking"},
    {"search"},
    {"commands"},
    {"privacy_commands", "sweep_commands"},  # the `dpsearch privacy` verbs and the sweep verbs, beside commands.py
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _imports(path: Path) -> set[str]:
    """Top-level dpsearch components a file imports, lazy imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found |= {n.split(".")[1] for n in names if n.startswith("dpsearch.")}
    return found


def test_every_module_has_a_layer_and_imports_only_below_it():
    wrong = []
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        comp = parts[0]
        assert comp in LAYER, f"dpsearch/{comp} has no layer: add it to LAYERS in {Path(__file__).name}"
        for dep in _imports(f) - {comp}:
            if LAYER.get(dep, len(LAYERS)) >= LAYER[comp]:
                wrong.append(f"{f.relative_to(PACKAGE.parent)} imports dpsearch.{dep}")
    assert wrong == [], "imports that run up (or across) the layers:\n" + "\n".join(wrong)


def test_the_check_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from dpsearch.sweep import run_sweep\n    import dpsearch.cli\n")
    assert _imports(f) == {"sweep", "cli"}


def test_only_the_pipeline_fine_tunes():
    """load → fine-tune → sample → score lives in pipeline.py; its callers (run, finetune, the sweep's trainable
    and validation generator) do not call the fine-tune themselves."""
    callers = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name in ("pipeline.py", "finetune.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ("dp_finetune", "finetune_non_private"):
                    callers.append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert callers == []


def test_no_module_grows_past_350_lines():
    long = {str(f.relative_to(PACKAGE.parent)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 350}
    assert long == {}, "split these by responsibility"
