"""Start a new project from this template: a clean copy without runs, caches, data or git history.

    python -m utils.new_project ../my_project
"""
import shutil
import sys
from pathlib import Path

from utils.cli import ArgumentParser, run_cli
from utils.errors import UserError

TEMPLATE = Path(__file__).resolve().parents[1]
# Caches and history anywhere, and at the top the outputs of runs and the data: what a run or a tool made,
# not what the template is (utils/data/ is the template's own).
LEFT_OUT = [".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".venv", "venv",
            "*.egg-info", ".ipynb_checkpoints", ".benchmarks"]
LEFT_OUT_AT_THE_TOP = {"saved", "data", "wandb", "predictions.csv"}


def new_project(target: str | Path) -> Path:
    """Copy the template to ``target``, which must not exist or be empty; returns its path."""
    target = Path(target).resolve()
    if target == TEMPLATE or TEMPLATE in target.parents:
        raise UserError(str(target), "is inside the template; choose a folder outside it")
    if target.exists() and any(target.iterdir()):
        raise UserError(str(target), "already exists and is not empty")
    caches = shutil.ignore_patterns(*LEFT_OUT)

    def left_out(folder: str, names: list[str]) -> set[str]:
        top = LEFT_OUT_AT_THE_TOP & set(names) if Path(folder) == TEMPLATE else set()
        return caches(folder, names) | top

    shutil.copytree(TEMPLATE, target, ignore=left_out, dirs_exist_ok=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Copy this template into a new project folder.")
    parser.add_argument("target", help="the new project's folder, e.g. ../my_project")
    target = new_project(parser.parse_args(argv).target)
    print(f"new project in {target}\nnext:\n  cd {target}\n  git init\n"
          f"  pip install -r requirements.txt && {Path(sys.executable).name} train.py -c config.json")


if __name__ == "__main__":
    run_cli(main)
