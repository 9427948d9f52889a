"""The layout, read from the code itself: which files are the user's, which folders import which, and
the size limits that keep each file readable."""
import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

FOLDERS = {"base", "utils", "logger", "model", "dataset", "data_loader", "trainer"}
USER_FOLDERS = {"model", "dataset", "data_loader", "trainer"}
SCRIPTS = {"config_parser", "train", "kfold_train", "inference", "tune", "analyze", "export"}


def product_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed
            if not name.startswith(("tests/", "benchmarks/")) and (REPO / name).is_file()]


def owner(path: Path) -> str:
    """The folder a file belongs to (its top-level package), or the script's name."""
    parts = path.relative_to(REPO).parts
    return parts[0] if len(parts) > 1 else path.stem


def imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def folder_edges() -> dict[str, dict[str, list[str]]]:
    """{importer: {imported folder or script: [the files that import it]}}"""
    edges = defaultdict(lambda: defaultdict(list))
    for path in product_files():
        source = owner(path)
        for name in imports(path):
            target = name.split(".")[0]
            if target != source and (target in FOLDERS or target in SCRIPTS):
                edges[source][target].append(str(path.relative_to(REPO)))
    return edges


def test_no_two_folders_import_each_other():
    edges = folder_edges()
    both_ways = [(a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, {})]
    assert not both_ways, {f"{a} <-> {b}": (edges[a][b], edges[b][a]) for a, b in both_ways}


def test_utils_is_the_bottom_of_the_engine():
    edges = folder_edges()
    assert not {target for target in edges["utils"] if target in {"base", "logger", *SCRIPTS}}, dict(edges["utils"])
    assert "base" not in edges["logger"], dict(edges["logger"])


def test_no_engine_file_imports_a_user_file():
    """The engine reaches the user's components only through the table of section modules."""
    edges = folder_edges()
    engine = {"base", "utils", "logger", *SCRIPTS}
    found = {f"{source} -> {target}": files for source in engine for target, files in edges.get(source, {}).items()
             if target in USER_FOLDERS}
    assert not found, found
    table = (REPO / "utils" / "config" / "components.py").read_text()
    assert '"arch": "model.model"' in table and '"trainer": "trainer"' in table


def test_base_holds_only_the_classes_a_user_subclasses():
    files = {path.name for path in (REPO / "base").glob("*.py")}
    assert files == {"__init__.py", "base_data_loader.py", "base_dataset.py", "base_metric.py", "base_model.py",
                     "base_task.py", "base_trainer.py", "metric_tracker.py"}
    import base

    assert set(base.__all__) >= {"BaseDataLoader", "BaseDataset", "BaseModel", "BaseTask", "BaseTrainer", "Metric"}


def test_the_users_trainer_holds_only_the_hooks():
    path = REPO / "trainer" / "trainer.py"
    source = path.read_text()
    assert len(source.splitlines()) <= 90
    tree = ast.parse(source)
    (trainer,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    methods = {node.name for node in trainer.body if isinstance(node, ast.FunctionDef)}
    assert methods == {"_train_step", "_valid_step"}
    code = "\n".join(ast.unparse(statement) for node in trainer.body if isinstance(node, ast.FunctionDef)
                     for statement in node.body if not isinstance(statement, ast.Expr))  # docstrings aside
    for machinery in ("no_sync", "scaler", "accum", "distributed", "checkpoint", "autocast", "backward", "step()"):
        assert machinery not in code, machinery


def test_no_file_over_300_lines_and_no_function_over_60():
    too_long = []
    for path in product_files():
        source = path.read_text()
        if len(source.splitlines()) > 300:
            too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}()")
    assert not too_long, too_long


def test_no_pointer_to_documents_outside_the_repository():
    pattern = re.compile(r"\bSPEC\b|[Ii]ssue #?\d+|section \d+ of")
    texts = [*product_files(), REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "tests").glob("*.py")]
    found = [f"{path.relative_to(REPO)}:{i}" for path in texts if path.name != "test_layout.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_every_folder_is_a_package():
    for path in product_files():
        for folder in path.relative_to(REPO).parents:
            if folder != Path("."):
                assert (REPO / folder / "__init__.py").is_file(), folder
