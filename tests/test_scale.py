"""At scale: confusion matrices of many classes, and predictions that stream to disk."""
import logging

import numpy as np
import pandas as pd

import logger.visualization as visualization
import train as train_script
from logger.visualization import record_confusion_matrix, top_confused_pairs
from tests.conftest import make_config, run_dirs
from utils.checkpoint.files import load_checkpoint
from utils.cli import run_cli


class FakeWriter:
    def __init__(self):
        self.images, self.texts = {}, {}

    def add_image(self, tag, image, step):
        self.images[tag] = image

    def add_text(self, tag, text, step):
        self.texts[tag] = text


def test_a_confusion_matrix_is_an_image_up_to_the_limit_and_its_top_pairs_above():
    writer = FakeWriter()
    small = np.eye(3, dtype=np.int64) * 5
    record_confusion_matrix(writer, "small", small, ["a", "b", "c"], 1, max_classes=3)
    assert writer.images["small"].shape == (3, 36 + 3 * 28, 36 + 3 * 28)
    big = np.eye(300, dtype=np.int64) * 4
    big[7, 9], big[2, 1], big[5, 5] = 6, 3, 50
    record_confusion_matrix(writer, "big", big, None, 1, max_classes=50)
    assert "big" not in writer.images
    assert writer.texts["big"].splitlines()[2:] == ["| 7 | 9 | 6 |", "| 2 | 1 | 3 |"]
    assert top_confused_pairs(big, [f"c{i}" for i in range(300)], count=1) == [("c7", "c9", 6)]


def test_a_failure_to_draw_is_a_warning_and_the_last_epoch_is_kept(tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 8.78 GiB")

    monkeypatch.setattr(visualization, "confusion_matrix_image", out_of_memory)
    config = make_config(tmp_path, **{"trainer.tensorboard": True, "trainer.epochs": 2})
    try:
        run_cli(lambda: train_script.main(["-c", str(config)]))
    finally:
        logging.getLogger().handlers.clear()
    (run,) = run_dirs(tmp_path)
    printed = capsys.readouterr()
    assert "could not record val/confusion_matrix_last: MemoryError" in printed.out + printed.err
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert load_checkpoint(run / "last.pth")["epoch"] == 2


def test_inference_streams_rows_and_sigterm_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import os
    import signal

    import inference
    import utils.predict as predict_module

    config = make_config(tmp_path, **{"trainer.epochs": 1})
    try:
        run_cli(lambda: train_script.main(["-c", str(config)]))
    finally:
        logging.getLogger().handlers.clear()
    (run,) = run_dirs(tmp_path)
    output = tmp_path / "predictions.csv"
    output.write_text("id,prediction\n0,1\n")  # an earlier run's file
    rows_seen = []
    original_write = predict_module.PredictionWriter.write

    def write_then_stop(writer, ids, outputs, targets=None):
        original_write(writer, ids, outputs, targets)
        writer.file.flush()
        rows_seen.append(len(pd.read_csv(writer.temp)))
        if len(rows_seen) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a scheduler would, in the middle

    monkeypatch.setattr(predict_module.PredictionWriter, "write", write_then_stop)
    with_exit = None
    try:
        run_cli(lambda: inference.main(["--resume", str(run / "model_best.pth"), "--output", str(output),
                                        "--bs", "16"]))
    except SystemExit as stop:
        with_exit = stop.code
    finally:
        logging.getLogger().handlers.clear()
    assert rows_seen == [16, 32, 48]  # rows reach the disk batch by batch: nothing piles up in memory
    assert with_exit == 143
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "stopped by SIGTERM" in err[0] and "was not written" in err[0], err
    assert output.read_text() == "id,prediction\n0,1\n" and not list(tmp_path.glob("*.tmp"))
