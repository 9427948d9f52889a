"""Average the weights of checkpoints of one model into a new checkpoint that inference.py reads.

    python -m utils.average_checkpoints RUN/model_top_epoch7.pth RUN/model_top_epoch9.pth -o averaged.pth

Each file is loaded tensors-only and verified. The weights averaged are those inference.py predicts
with: the EMA's when a checkpoint has them, else the model's own. BatchNorm statistics are averaged
as they are; ``trainer.average_top_k`` recomputes them over the training data instead.
"""
from pathlib import Path

from utils.checkpoint.averaging import average_state_dicts, check_same_arch, weights_checkpoint
from utils.checkpoint.files import load_checkpoint, save_checkpoint
from utils.cli import ArgumentParser, run_cli
from utils.errors import CheckpointError, ConfigError
from utils.recipe.ema import model_weights


def average_checkpoint_files(paths: list[Path], output: Path) -> dict:
    """Average the weights of ``paths`` into ``output``; returns the checkpoint written.

    Examples:
        >>> average_checkpoint_files([Path("run/model_top_epoch7.pth"), Path("run/model_top_epoch9.pth")],
        ...                          Path("averaged.pth"))
    """
    if output.resolve() in {path.resolve() for path in paths}:
        raise ConfigError("-o", f"{output} is one of the checkpoints to average: choose another file")
    checkpoints = [load_checkpoint(path) for path in paths]
    check_same_arch(checkpoints, paths)
    state_dict = average_state_dicts([model_weights(checkpoint) for checkpoint in checkpoints],
                                     [str(path) for path in paths])
    averaged = weights_checkpoint(checkpoints[-1], state_dict, {}, [str(path) for path in paths])
    if not output.parent.is_dir():
        raise CheckpointError(str(output), "its folder does not exist")
    save_checkpoint(averaged, output)
    return averaged


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Average the weights of checkpoints of one model.")
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files of one model")
    parser.add_argument("-o", "--output", required=True, help="the averaged checkpoint to write")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    paths = [Path(path) for path in args.checkpoints]
    average_checkpoint_files(paths, Path(args.output))
    print(f"averaged {len(paths)} checkpoints into {args.output}")


if __name__ == "__main__":
    run_cli(main)
