"""EMA and MixUp/CutMix: exact resume after SIGTERM, inference on the EMA weights, and the
fine-tuning example config."""
import re
import signal
import time

import pytest

import inference
import train
from tests.conftest import REPO, make_config, run_dirs, run_in_process
from tests.test_resume import (
    INTERRUPT,
    assert_identical,
    assert_same_run,
    load_plain,
    metrics_rows,
    start_training,
    stop,
    train_run,
    wait_for_first_epoch,
)

EMA_MIXUP = INTERRUPT | {"trainer.epochs": 2, "dataset.args.test_size": 0.6,  # 72 batches of 8 per epoch
                         "trainer.ema": {"decay": 0.99, "warmup": True, "validate_both": True},
                         "trainer.mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "switch_prob": 0.5}}


@pytest.mark.slow
def test_ema_and_mixup_resume_after_sigterm_equals_the_uninterrupted_run(tmp_path):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = train_run(reference_dir, EMA_MIXUP)  # in this process
    config = make_config(tmp_path, **EMA_MIXUP)
    process = start_training(config)
    try:
        _, epoch_time = wait_for_first_epoch(tmp_path, process)
        time.sleep(0.3 * epoch_time)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        stop(process)
    (run,) = run_dirs(tmp_path)
    assert process.returncode == 143, stderr
    stopped = load_plain(run / "last.pth")
    assert stopped["batches_done"] > 0 and stopped["ema"]["num_updates"] > stopped["batches_done"]

    run_in_process("train.py", "-r", str(run), check=True)
    assert_same_run(reference, run, epochs=2)
    assert_identical(load_plain(reference / "last.pth")["ema"], load_plain(run / "last.pth")["ema"], "ema")
    columns = metrics_rows(run)[0].keys()
    assert {"val_loss", "raw_val_loss", "raw_val_accuracy"} <= columns

    # inference.py predicts with the EMA weights (whose validation is val_*), --no-ema with the model's own.
    last_row = metrics_rows(run)[-1]
    ema_loss, raw_loss = float(last_row["val_loss"]), float(last_row["raw_val_loss"])
    assert abs(ema_loss - raw_loss) > 1e-3, "the EMA must differ from the weights for this test"
    for extra, expected in (([], ema_loss), (["--no-ema"], raw_loss)):
        log_size = (run / "info.log").stat().st_size
        inference.main(["--resume", str(run / "last.pth"), "--split", "valid", "--output",
                        str(tmp_path / "predictions.csv"), *extra])
        new_log = (run / "info.log").read_text()[log_size:]
        (loss,) = re.findall(r"\bloss (\d+\.\d+)", new_log)
        assert float(loss) == pytest.approx(expected, abs=2e-6), extra


def test_the_finetune_config_runs_with_a_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), weights)
    train.main(["-c", str(REPO / "configs" / "finetune_timm.json"), f"arch.args.weights_file={weights}",
                f"trainer.save_dir={tmp_path}", "trainer.epochs=1", "n_gpu=0", "+dataset.args.test_size=0.95",
                "trainer.tensorboard=false", "trainer.progress_bar=false"])
    (run,) = list((tmp_path / "Finetune_ResNet18").iterdir())
    (row,) = metrics_rows(run)
    checkpoint = load_plain(run / "last.pth")
    assert checkpoint["ema"]["num_updates"] == checkpoint["global_step"] > 0
    # layer decay 0.75 over resnet18's 10 layer groups, warmup from 0.01 x lr
    assert float(row["lr_layer9"]) == pytest.approx(0.001 * 0.01, rel=1e-9)
    assert float(row["lr_layer0"]) == pytest.approx(0.001 * 0.01 * 0.75 ** 9, rel=1e-9)
    assert checkpoint["state_dict"]["model.fc.weight"].shape == (10, 512)
