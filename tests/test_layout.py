"""The shape of the code base the README promises: small modules, short functions, one training path."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "crlearn"


def test_no_module_over_400_lines_and_no_function_over_70():
    too_long = []
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > 400:
            too_long.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 70:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, too_long


def test_the_cli_builds_no_data_set_and_runs_no_loop_itself():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    train = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "cmd_train")
    called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
              for n in ast.walk(train) if isinstance(n, ast.Call)}
    assert "run" in called
    assert not called & {"SegmentationDataset", "fit", "evaluate", "split_by_group", "CRNet"}


def test_the_teaching_blocks_do_not_depend_on_the_speed_workarounds():
    for name in ("blocks", "encoder", "coarse", "refine", "model", "losses", "metrics"):
        imported = {n.module for n in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text()))
                    if isinstance(n, ast.ImportFrom) and n.module}
        assert "perf" not in imported, name


def test_stored_notebooks_hold_no_execution_timestamps():
    import json

    for path in sorted((PACKAGE.parent / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        assert not [i for i, c in enumerate(cells) if "execution" in c.get("metadata", {})], path.name
