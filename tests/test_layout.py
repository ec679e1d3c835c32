"""The shape of the code base the README promises: subpackages by concept whose imports point one way, short
functions, one training path."""

import ast
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "crlearn"
MAX_FUNCTION_LINES = 60


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("crlearn", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def _imported(tree):
    """Every crlearn module a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crlearn"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("crlearn"))
    return found


def test_imports_point_one_way_nn_and_data_never_import_training_tasks_or_cli():
    wrong = []
    for name, _, tree in _modules():
        layer = name.split(".")[1] if "." in name else ""
        forbidden = {"nn": ("crlearn.training", "crlearn.tasks", "crlearn.cli", "crlearn.data"),
                     "data": ("crlearn.training", "crlearn.tasks", "crlearn.cli", "crlearn.nn"),
                     "training": ("crlearn.tasks", "crlearn.cli"),
                     "tasks": ("crlearn.cli",)}.get(layer, ())
        wrong += [f"{name} imports {m}" for m in _imported(tree) if m.startswith(forbidden)]
    assert not wrong, wrong


def test_only_the_cli_imports_the_process_wide_speed_workarounds():
    users = {name for name, _, tree in _modules() if "crlearn.training.perf.keep_freed_memory" in _imported(tree)}
    assert users <= {n for n in users if n.startswith("crlearn.cli")}, users


def test_no_function_over_sixty_lines():
    too_long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                for _, path, tree in _modules() for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not too_long, too_long


def test_the_cli_builds_no_data_set_and_runs_no_loop_itself():
    tree = ast.parse((PACKAGE / "cli" / "main.py").read_text())
    train = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "cmd_train")
    called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
              for n in ast.walk(train) if isinstance(n, ast.Call)}
    assert "run" in called
    assert not called & {"SegmentationDataset", "fit", "evaluate", "split_by_group", "CRNet"}


def test_the_teaching_blocks_do_not_depend_on_the_speed_workarounds():
    for name, _, tree in _modules():
        if name.startswith("crlearn.nn") or name in ("crlearn.losses", "crlearn.metrics"):
            assert not {m for m in _imported(tree) if "perf" in m or "fastpath" in m}, name


def test_stored_notebooks_hold_no_execution_timestamps():
    for path in sorted((PACKAGE.parent / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        assert not [i for i, c in enumerate(cells) if "execution" in c.get("metadata", {})], path.name


def test_environment_yml_lists_pyprojects_dependencies_and_notebooks_extra():
    import re

    tomllib = __import__("pytest").importorskip("tomllib")
    root = PACKAGE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    want = project["dependencies"] + project["optional-dependencies"]["notebooks"] + ["-e ."]
    pip = re.findall(r"^\s{6}- (.+)$", (root / "environment.yml").read_text(), flags=re.M)
    assert pip == want
