"""Every command README.md and its guides in docs/ show is one that works.

Each command line of the README's bash blocks is parsed by its script's own argument parser; the
ones that start from a config are run with --dry-run (which builds everything), so their options,
overrides and config paths are all checked. Commands on a run directory are parsed only: training,
resuming, k-fold and inference themselves are covered by the other tests.
"""
import json
import re
import shlex

import pytest

import analyze
import export
import inference
import kfold_train
import train
import tune
from tests.conftest import REPO

# The students of README's distillation chain, which need the teacher the commands before them train.
CHAIN_STUDENTS = {"configs/distill_student.json", "configs/distill_student_pseudo.json"}
SCRIPTS = {"train.py": train, "kfold_train.py": kfold_train, "inference.py": inference, "tune.py": tune,
           "analyze.py": analyze, "export.py": export}


def manual_text() -> str:
    """README.md and the longer guides it links to in docs/."""
    return "\n".join(path.read_text() for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def readme_commands() -> list[str]:
    text = manual_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_has_the_two_setup_commands():
    commands = readme_commands()
    assert commands[0] == "pip install -r requirements.txt && python train.py -c config.json"
    assert commands[1].endswith("python -m pytest -q")
    assert "python -m pytest -q" in (REPO / ".ci" / "run").read_text(), "CI runs the README's test command"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(command, tmp_path, capsys):
    for part in command.split("&&"):
        tokens = shlex.split(part)
        if tokens[0] == "pip":
            for requirements in tokens[tokens.index("-r") + 1::2]:
                assert (REPO / requirements).is_file()
            continue
        if tokens[0] == "torchrun":
            script_at = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
            tokens = ["python", *tokens[script_at:]]  # torchrun's own options come before the script
        if tokens[0] in ("wandb", "tensorboard", "optuna-dashboard"):
            continue
        if tokens[0] == "bash":
            assert (REPO / tokens[1]).is_file()
            continue
        assert tokens[0] == "python", part
        if tokens[1] == "-m":
            assert tokens[2] in ("pytest", "utils.new_project", "utils.average_checkpoints")
            continue
        script, argv = tokens[1], tokens[2:]
        assert (REPO / script).is_file(), script
        if script not in SCRIPTS:  # the benchmarks
            continue
        SCRIPTS[script].command_line().parse_intermixed_args(argv)
        uses_a_run = {"-r", "--resume", "--finetune"} & set(argv)
        if set(argv) & CHAIN_STUDENTS:
            continue  # they read the teacher's files: test_pseudo_labels.py runs the chain in order
        if script not in ("inference.py", "analyze.py") and not uses_a_run:
            SCRIPTS[script].main([*argv, "--dry-run", f"trainer.save_dir={tmp_path}"])
            assert "dry run" in capsys.readouterr().out
            assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("path", ["config.json", "configs/iris_mlp.json", "configs/image_folder.json",
                                  "configs/finetune_timm.json", "configs/facemask.json"])
def test_example_configs_are_valid(path, tmp_path):
    from config_parser import ConfigParser

    config = json.loads((REPO / path).read_text())
    ConfigParser(config, modification={"dataset.args.root": str(tmp_path)} if "root" in str(config) else None)


def test_readme_json_snippets_parse():
    text = manual_text()
    for snippet in re.findall(r"```json\n(.*?)```", text, flags=re.S):
        json.loads("{" + snippet.strip().rstrip(",") + "}")


def test_readme_documents_every_config_key():
    from utils.config.schema import SECTIONS, TOP_LEVEL

    text = (REPO / "README.md").read_text()
    for key in TOP_LEVEL:
        assert f"`{key}" in text, key
    for section, schema in SECTIONS.items():
        for key in schema:
            assert f"{section}.{key}" in text or f"/ `{key}`" in text or f"`{key}`" in text, f"{section}.{key}"
    assert manual_text().count("PENDING") == 0, "the benchmark figures are filled in"
