"""The shape of the code: imports run one way, one idea per module, short functions.

These are checks a reviewer would otherwise do by hand on every change (issue "One shape").
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "classifier"
# Third-party modules imported inside the function that needs them: optional extras, and
# torchvision's models (seconds at start-up that predicting with most models does without).
LATE_IMPORTS = {"matplotlib", "onnx", "onnxruntime", "onnxscript", "torchvision"}
MAX_FUNCTION_LINES = 60
# Lower layers never import higher ones (commands sit on top; within a layer anything acyclic goes).
LAYERS = [
    {"errors", "recipes", "files", "registry", "progress", "runtime", "cli"},
    {"models", "backbones", "images", "augment", "calibration", "neither", "distributed", "downloads", "plots", "pages",
     "layers", "pictures"},
    {"data", "tta", "features", "checkpoint", "config", "plan", "thumbnails", "probe"},
    {"loop", "inference", "runs", "gradcam", "fitting", "crossval", "budget", "scan", "checks", "web", "projects",
     "jobs", "inside"},
    {"train", "predict", "report", "explain", "export", "serve", "audit", "workspace", "studio_photos",
     "studio_runs", "studio", "learn", "learn_view", "inside_view"},
]


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def imported(node: ast.AST) -> list[str]:
    """Top-level module names an import statement brings in (classifier.x counts as x)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] if node.module != "classifier" else [f"classifier.{a.name}" for a in node.names]
    else:
        return []
    return [n.split(".")[1] if n.startswith("classifier.") else n.split(".")[0] for n in names]


def package_imports(tree: ast.Module, own: set[str]) -> set[str]:
    return {name for node in tree.body for name in imported(node) if name in own}


def test_every_module_is_in_a_layer():
    assert not set(modules()) - set().union(*LAYERS)


def test_imports_run_from_commands_down_and_form_no_cycle():
    trees = modules()
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    graph = {name: package_imports(tree, set(trees)) for name, tree in trees.items()}
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if level[b] > level[a]]
    assert not upward, f"a lower layer imports a higher one: {upward}"
    visiting, done = set(), set()

    def visit(name, path):
        assert name not in visiting, f"import cycle: {' -> '.join(path + [name])}"
        if name not in done:
            visiting.add(name)
            for dep in graph[name]:
                visit(dep, path + [name])
            visiting.discard(name)
            done.add(name)

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_import_inside_a_function_or_at_the_end_but_optional_ones(name):
    tree = modules()[name]
    body_imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    first_code = next((i for i, node in enumerate(tree.body) if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr))), len(tree.body))
    late = [node.lineno for node in body_imports if tree.body.index(node) > first_code]
    assert not late, f"{name}.py imports after code, at lines {late}"
    nested = [(node.lineno, n) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
              for inner in ast.walk(node) for n in imported(inner)]
    assert all(n in LATE_IMPORTS for _, n in nested), f"{name}.py imports inside a function: {nested}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_short(name):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(modules()[name])
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}.py: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_readme_names_every_module_in_its_layer():
    """README's "Where things are" has one row per layer of LAYERS, naming exactly that layer's modules."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("## Where things are"):].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    named = [set(re.findall(r"`(\w+)\.py`", row)) for row in rows]
    assert [set(layer) for layer in reversed(LAYERS)] == named
