"""Does the suite notice when a guarantee breaks? One-line sabotages of the product, each run against the
tests that should catch it.

    python tests/mutations.py                 # every sabotage (tens of minutes on 2 cores)
    python tests/mutations.py purge_step rng  # those whose name contains one of the words

For each sabotage: copy the repository to a temporary folder (without saved/, .git/ and caches),
replace the old text by the new one in one file, and run the listed tests there. CAUGHT: a test
failed. SURVIVED: every test passed, so the guarantee can break unnoticed: strengthen a test.
STALE: the old text is no longer found exactly once (the product code moved): update the entry.
Exit code 1 if any sabotage survived or is stale.

Add an entry whenever a new guarantee gets a test. This file is not collected by pytest.
"""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]


class Sabotage(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: list[str]


COMP, PATHS, WORK = ("tests/test_competition.py::test_", "tests/test_paths_and_submission.py::test_",
                     "tests/test_workers_exit.py::test_")
SABOTAGES = [
    Sabotage("export the raw weights of an EMA run", "export.py",
             "use_ema=not args.no_ema)", "use_ema=False)",
             ["tests/test_export.py::test_the_onnx_model_computes_what_the_ema_model_does"]),
    Sabotage("keep an export that fails verification", "utils/export/verify.py",
             'if not report["max_abs_diff"] <= atol:', "if False:",
             ["tests/test_export.py::test_a_model_that_exports_differently_fails_verification_and_leaves_no_file"]),
    Sabotage("model card normalisation from the training transform", "utils/export/card.py",
             'steps = args.get("eval_transform") or []', 'steps = args.get("train_transform") or []',
             ["tests/test_export.py::test_the_model_card_holds_the_configs_preprocessing_and_the_checkpoints_hash"]),
    Sabotage("skip the epoch scheduler step", "utils/recipe/schedulers.py",
             "    else:\n        lr_scheduler.step()",
             "    else:\n        pass",
             ["tests/test_trainer_checkpoints.py::test_an_epoch_scheduler_steps_once_per_epoch"]),
    Sabotage("skip the ReduceLROnPlateau step", "utils/recipe/schedulers.py",
             'lr_scheduler.step(log[monitor_key or "loss"])', "pass",
             ["tests/test_trainer_checkpoints.py::"
              "test_reduce_lr_on_plateau_lowers_the_lr_after_patience_epochs_without_improvement"]),
    Sabotage("drop purge_step", "logger/recorder.py",
             "purge_step=resumed_step + 1 if resumed_epoch is not None else None", "purge_step=None",
             ["tests/test_tracking.py::test_tensorboard_hides_the_events_of_an_epoch_redone_after_a_crash"]),
    Sabotage("pad DDP validation shards", "base/base_data_loader.py",
             "shard = self.valid_indices[get_rank() :: get_world_size()]",
             "shard = self.valid_indices[list(torch.utils.data.DistributedSampler(self.valid_indices, "
             "get_world_size(), get_rank(), shuffle=False))]",
             ["tests/test_distributed.py::test_ddp_matches_one_process_with_the_same_global_batch"]),
    Sabotage("ignore train_transform", "base/base_dataset.py",
             "transform = self.train_transform if self.augment else self.eval_transform",
             "transform = self.eval_transform",
             ["tests/test_extension.py::test_add_transforms"]),
    Sabotage("copy instead of hard-linking checkpoints", "utils/checkpoint/files.py",
             "        os.link(source, temp)", "        shutil.copyfile(source, temp)",
             ["tests/test_checkpoint_files.py::test_periodic_and_best_checkpoints_are_hard_links_to_last"]),
    Sabotage("stop restoring RNG state", "utils/checkpoint/training_state.py",
             "        set_rng_state(trainer.rng_to_restore)", "        pass",
             ["tests/test_trainer_checkpoints.py::test_resume_in_process_continues_the_random_state"]),
    Sabotage("drop the checksum check", "utils/checkpoint/files.py",
             "if hashlib.sha256(data[:tag_at]).hexdigest() != expected:", "if False:",
             ["tests/test_checkpoint_files.py::test_load_checkpoint_names_a_damaged_file"]),
    Sabotage("average metrics over batches", "base/metric_tracker.py",
             "self.add_total(batch_mean.detach() * n, n)", "self.add_total(batch_mean.detach(), 1)",
             ["tests/test_metrics.py::test_many_batches_flush_in_groups",
              "tests/test_metrics.py::test_tracker_matches_sklearn_over_uneven_batches"]),
    Sabotage("average the loss over batches", "base/metric_tracker.py",
             "loss_total = sum(loss.double() * n for loss, n in zip(losses, counts))",
             "loss_total = sum(loss.double() for loss in losses) * sum(counts) / len(counts)",
             ["tests/test_metrics.py::test_loss_is_sample_weighted"]),
    Sabotage("a second Ctrl-C does not abort", "base/base_trainer.py",
             "raise KeyboardInterrupt  # a second Ctrl-C aborts at once", "pass",
             ["tests/test_resume.py::test_a_second_ctrl_c_aborts_at_once"]),
    Sabotage("a NaN on another process goes unnoticed", "utils/distributed.py",
             "if any_bad and not bad:", "if False:",
             ["tests/test_distributed.py::test_non_finite_loss_on_one_process_stops_every_process"]),
    Sabotage("a mid-epoch checkpoint keeps rank 0's running totals only", "utils/checkpoint/training_state.py",
             '"epoch_state": dist.gather_objects(epoch_state(trainer)) if batches_done else {}',
             '"epoch_state": [epoch_state(trainer)] * dist.get_world_size() if batches_done else {}',
             ["tests/test_distributed.py::test_sigterm_on_one_process_mid_epoch_then_resume_equals_the_uninterrupted_run"]),
    Sabotage("DDP never syncs accumulated gradients", "base/base_trainer.py",
             "sync = step_now or not isinstance(", "sync = (step_now and self.accum_steps == 1) or not isinstance(",
             ["tests/test_distributed.py::test_gradient_accumulation_under_ddp_matches_the_same_global_batch"]),
    Sabotage("accumulated losses are not divided", "base/base_trainer.py",
             "loss / self.accum_steps if self.accum_steps > 1 else loss", "loss",
             ["tests/test_distributed.py::test_gradient_accumulation_matches_a_full_batch"]),
    Sabotage("resume loads the done batches", "base/base_data_loader.py",
             "self.epoch_sampler.skip = count * self.batch_size",
             "self.epoch_sampler.skip = 0; [batch for batch, _ in zip(self, range(count))]; "
             "self.epoch_sampler.skip = count * self.batch_size",
             ["tests/test_resume.py::test_resume_skips_the_done_batches_without_loading_them"]),
    Sabotage("inference accepts other class names", "inference.py",
             "and list(dataset.classes) != list(model_classes):", "and False:",
             ["tests/test_inference.py::test_labelled_images_with_other_class_names_of_the_same_count_are_an_error"]),
    Sabotage("focal loss without its modulating factor", "model/loss.py",
             "loss = -((1 - log_prob.exp()) ** gamma) * log_prob", "loss = -log_prob",
             ["tests/test_losses.py"]),
    Sabotage("bypass the custom step hook", "base/base_trainer.py",
             "loss, output = self._train_step(inputs, step_target)",
             "output = self.model(inputs); loss = self.criterion(output, step_target)",
             ["tests/test_custom_trainer.py::test_readme_trainer_follows_the_schedule_and_is_used"]),
    Sabotage("validate the raw weights instead of the EMA", "base/base_trainer.py",
             "            return self.ema.module", "            pass",
             ["tests/test_ema_mixup.py::test_ema_and_mixup_resume_after_sigterm_equals_the_uninterrupted_run"]),
    Sabotage("split groups across the validation split", "utils/data/splits.py",
             "        if groups is not None:", "        if False:",
             ["tests/test_groups_imbalance.py::test_validation_split_keeps_every_group_on_one_side"]),
    Sabotage("competition: leave a finished trial's workers running", "tune.py", "                stop_workers(trainer"
             ".data_loader, trainer.valid_data_loader)", "                pass", [f"{WORK}each_trial_stops_its_workers"
                                                                                  "_when_it_ends"]),
    Sabotage("competition: forgotten workers left to multiprocessing", "utils/data/workers.py", "workers = [child "
             "for child in multiprocessing.active_children() if child.daemon]", "workers = []",
             [f"{WORK}workers_of_a_forgotten_loader_do_not_block_the_exit"]),
    Sabotage("competition: inference keeps the training sampler", "inference.py", 'overrides = {"sampler": None, '
             '"samples_per_epoch": None, "drop_last": False}', "overrides = {}",
             [f"{COMP}inference_reads_every_test_sample_once_whatever_the_training_sampler"]),
    Sabotage("competition: hold-out stratified on the raw targets, not the task's labels", "train.py",
             'return {"stratify_labels": stratification_labels(task, dataset, config["kfold"]["n_bins"])}',
             "return {}", [f"{COMP}a_regression_holdout_stratifies_on_the_tasks_quantile_bins"]),
    Sabotage("competition: grouped hold-out on 2-D labels as they are", "utils/data/splits.py", "np.zeros(n), "
             "one_label_per_sample(targets), codes", "np.zeros(n), np.asarray(targets), codes",
             [f"{COMP}a_grouped_holdout_of_label_rows_stratifies_on_their_combinations"]),
    Sabotage("competition: class names cut to 15 characters", "logger/class_balance.py", 'lines.append(f"{str(name):<'
             '{width}}', 'lines.append(f"{str(name)[:15]:<{width}}',
             [f"{COMP}class_balance_table_shows_whole_class_names"]),
    Sabotage("competition: label_bins put an edge in the bin below", "dataset/path_labels.py", "digitize(numbers, "
             "edges)", "digitize(numbers, edges, right=True)",
             [f"{PATHS}labels_and_groups_from_paths_with_a_map_and_bins"]),
    Sabotage("competition: label_map classes sorted, not in the map's order", "dataset/path_labels.py", "names = list("
             "dict.fromkeys(mapping.values()))", "names = sorted(set(mapping.values()))",
             [f"{PATHS}labels_and_groups_from_paths_with_a_map_and_bins"]),
    Sabotage("competition: skip_unmatched ignored", "dataset/path_labels.py", "            if not skip_unmatched:",
             "            if True:", [f"{PATHS}skip_unmatched_leaves_out_the_files_the_pattern_misses"]),
    Sabotage("competition: submission rows in the predictions' order", "utils/submission.py", "predictions[source]"
             ".to_numpy()[rows]", "predictions[source].to_numpy()",
             [f"{PATHS}the_submission_copies_the_csv_and_fills_its_rows_by_file_name"]),
    Sabotage("competition: an extra predicted image is not an error", "utils/submission.py", "    if extra:",
             "    if False:", [f"{PATHS}a_missing_or_extra_image_is_one_error_naming_it"]),
    Sabotage("competition: auto schedule length ignores the warmup", "utils/recipe/schedulers.py",
             "    return total - warmup_length", "    return total",
             [f"{COMP}auto_length_is_the_epochs_or_steps_after_the_warmup"]),
    Sabotage("competition: auto length silently kept when the epochs change on resume", "utils/recipe/schedulers.py",
             'if key is not None and "trainer.epochs" in changes', 'if False and "trainer.epochs" in changes',
             [f"{COMP}auto_length_on_resume_refuses_new_epochs_alone"]),
    Sabotage("competition: valid predictions overwrite the test predictions", "inference.py", '"predictions_valid.csv'
             '" if split == "valid"', '"predictions.csv" if split == "valid"',
             [f"{COMP}valid_predictions_do_not_overwrite_the_test_predictions"]),
    Sabotage("guard off: a negative parameter-group rate is accepted", "utils/config/values.py",
             '"lr": Field((float,), None, non_negative),', '"lr": Field((float,), None),',
             ["tests/test_guards.py::test_a_bad_value_is_one_exact_error_line[negative group rate]"]),
    Sabotage("guard off: a negative class weight is accepted", "utils/config/values.py",
             "if not _is_number(weight) or weight < 0:", "if not _is_number(weight):",
             ["tests/test_guards.py::test_a_bad_value_is_one_exact_error_line[negative class weight]"]),
    Sabotage("guard off: a threshold above 1 is accepted", "model/task.py",
             "and 0 <= v <= 1 for v in values", "and 0 <= v for v in values",
             ["tests/test_guards.py::test_a_bad_value_is_one_exact_error_line[threshold above 1]"]),
    Sabotage("guard off: a balanced sampler on regression values", "utils/config/values.py",
             'get("sampler") == "balanced" and kind == "value":', 'get("sampler") == "balanced" and False:',
             ["tests/test_guards.py::test_a_bad_value_is_one_exact_error_line[balanced sampler on values]"]),
    Sabotage("guard off: MixUp on a table", "utils/recipe/mixup.py",
             "if self.mix is not None and data.ndim != 4:", "if False:",
             ["tests/test_guards.py::test_a_bad_value_is_one_exact_error_line[MixUp on a table]"]),
    Sabotage("guard off: no warning for a warmup as long as the run", "utils/config/suspicious.py",
             'if warmup.get("epochs") is not None and warmup["epochs"] >= epochs:', "if False:",
             ["tests/test_guards.py::test_a_setting_meant_rarely_runs_with_one_warning_line"
              "[warmup as long as the run]"]),
    Sabotage("guard off: a JSON key given twice keeps the last", "utils/util.py",
             "json.loads(text, object_pairs_hook=_refuse_duplicates)", "json.loads(text)",
             ["tests/test_guards.py::test_a_key_given_twice_names_the_key_and_its_line"]),
    Sabotage("guard off: a search step wider than its range", "utils/tune/space.py",
             "if low == high or (step is not None and step > high - low):", "if False:",
             ["tests/test_guards.py::test_a_bad_search_is_one_exact_error_line_in_the_dry_run"
              "[a step wider than the range]"]),
    Sabotage("guard off: an ensemble of different tasks is averaged", "utils/predict.py",
             "if own_task != task:", "if False:",
             ["tests/test_guards.py::test_inference_refuses_an_ensemble_of_different_tasks_heads_or_classes"]),
    Sabotage("guard off: predictions written over a checkpoint", "utils/predict.py",
             "if path.suffix.lower() in CHECKPOINT_SUFFIXES:", "if False:",
             ["tests/test_guards.py::test_inference_refuses_an_output_that_is_a_checkpoint_a_folder_or_unwritable"]),
    Sabotage("guard off: a weights file of another architecture loads", "utils/checkpoint/pretrained.py",
             "        if strict:", "        if False:",
             ["tests/test_guards.py::test_a_weights_file_of_another_architecture_is_an_error_unless_not_strict"]),
    Sabotage("resume change: regrouping the parameters is silently accepted", "utils/checkpoint/resume.py",
             '        _check_group_changes(changes, new["optimizer"].get("no_decay_norm_and_bias", True), '
             '_default_decay(new))',
             "        pass",
             ["tests/test_resume_changes.py::test_a_change_resume_cannot_apply_exactly_is_refused_before_anything_is_built"]),
    Sabotage("resume change: adding a ReduceLROnPlateau is silently accepted", "utils/checkpoint/resume.py",
             "if before != after and PLATEAU in (before, after):", "if False:",
             ["tests/test_resume_changes.py::test_a_change_resume_cannot_apply_exactly_is_refused_before_anything_is_built"]),
    Sabotage("resume change: a task change is silently accepted", "utils/checkpoint/resume.py",
             '    "task.type": "what the targets mean, which the model\'s outputs were trained for",\n', "",
             ["tests/test_resume_changes.py::test_a_change_resume_cannot_apply_exactly_is_refused_before_anything_is_built"]),
    Sabotage("resume change: the new scheduler is not replayed", "utils/checkpoint/resume_rates.py",
             "            for _ in range(steps):\n                lr_scheduler.step()",
             "            pass",
             ["tests/test_resume_changes.py::test_a_scheduler_with_warmup_added_on_resume_gives_the_rates_of_a_new_run"]),
    Sabotage("resume change: a group's new rate is not applied", "utils/checkpoint/resume_rates.py",
             '        group["lr"] = new.get("initial_lr", new["lr"])', "        pass",
             ["tests/test_resume_changes.py::test_a_parameter_group_rate_changed_on_resume_is_in_the_next_checkpoint"]),
    Sabotage("top-k forgets its list on resume", "utils/checkpoint/top_k.py",
             'self.entries, self.dropped = state["entries"][: self.k], state["entries"][self.k :]',
             "self.entries, self.dropped = [], []",
             ["tests/test_averaging.py::test_resuming_keeps_the_top_k_list"]),
    Sabotage("top-k keeps the files that dropped out", "utils/checkpoint/top_k.py",
             '                (run_dir / entry["file"]).unlink(missing_ok=True)', "                pass",
             ["tests/test_averaging.py::test_the_kept_checkpoints_are_the_k_best_epochs_of_metrics_csv"]),
    Sabotage("top-k ranks the wrong way", "utils/checkpoint/top_k.py",
             'better = (lambda a, b: a < b) if self.mode == "min" else (lambda a, b: a > b)',
             'better = (lambda a, b: a > b) if self.mode == "min" else (lambda a, b: a < b)',
             ["tests/test_averaging.py::test_the_kept_checkpoints_are_the_k_best_epochs_of_metrics_csv"]),
    Sabotage("top-k average of the best checkpoint only", "utils/checkpoint/top_k.py",
             'paths = [trainer.run_dir / entry["file"] for entry in top.entries]',
             'paths = [trainer.run_dir / entry["file"] for entry in top.entries[:1]]',
             ["tests/test_averaging.py::test_the_average_is_the_mean_of_the_top_k_weights_and_inference_reads_it"]),
    Sabotage("averages keep the averaged BatchNorm statistics", "utils/recipe/averaged_eval.py",
             "    recompute_batchnorm(model, trainer)", "    pass",
             ["tests/test_averaging.py::test_the_average_is_the_mean_of_the_top_k_weights_and_inference_reads_it"]),
    Sabotage("average_checkpoints accepts other models", "utils/average_checkpoints.py",
             "    check_same_arch(checkpoints, paths)", "    pass",
             ["tests/test_averaging.py::test_the_script_averages_every_tensor_and_refuses_other_models"]),
    Sabotage("averaging accepts save_top_k -1", "utils/config/schema.py",
             '"save_top_k": Field((int,), 0, non_negative)', '"save_top_k": Field((int,), 0)',
             ["tests/test_averaging.py::test_bad_averaging_settings_are_one_error_line"]),
    Sabotage("swa accepts a start fraction of 1 or more", "utils/config/weight_averaging.py",
             "if isinstance(start, float) and not 0 < start < 1:", "if False:",
             ["tests/test_averaging.py::test_bad_averaging_settings_are_one_error_line"]),
    Sabotage("swa validates the raw weights", "base/base_trainer.py",
             "            return self.averaged_model", "            pass",
             ["tests/test_swa.py::test_swa_follows_swalr_per_group_and_validates_the_average"]),
    Sabotage("swa lets the configured scheduler step", "utils/recipe/swa.py",
             "        trainer.scheduler_interval = NO_STEP", "        pass",
             ["tests/test_swa.py::test_swa_follows_swalr_per_group_and_validates_the_average"]),
    Sabotage("swa lr ignores the group ratios", "utils/recipe/swa.py",
             'swa_lr=[self.spec["lr"] * ratio for ratio in ratios]', 'swa_lr=self.spec["lr"]',
             ["tests/test_swa.py::test_swa_follows_swalr_per_group_and_validates_the_average"]),
    Sabotage("swa resume restarts SWALR", "utils/recipe/swa.py",
             '        self.scheduler.load_state_dict(state["scheduler"])', "        pass",
             ["tests/test_swa.py::test_swa_resume_after_sigterm_in_epoch_4_equals_the_uninterrupted_run"]),
    Sabotage("swa resume restarts the average", "utils/recipe/swa.py",
             '        self.averaged.module.load_state_dict(state["state_dict"])', "        pass",
             ["tests/test_swa.py::test_swa_resume_after_sigterm_in_epoch_4_equals_the_uninterrupted_run"]),
    Sabotage("lr finder leaves the trained weights", "utils/recipe/lr_finder.py",
             "        trainer.raw_model.load_state_dict(saved[0])", "        pass",
             ["tests/test_lr_finder.py::test_on_the_default_config_the_suggestion_is_a_usable_rate_and_the_model_is_untouched"]),
    Sabotage("lr finder without bias correction", "utils/recipe/lr_finder.py",
             "smoothed = average / (1 - beta ** (step + 1))", "smoothed = average",
             ["tests/test_lr_finder.py::test_on_the_default_config_the_suggestion_is_a_usable_rate_and_the_model_is_untouched"]),
    Sabotage("lr finder gives every group one rate", "utils/recipe/lr_finder.py",
             'group["lr"] = lr * ratio', 'group["lr"] = lr',
             ["tests/test_lr_finder.py::test_groups_keep_their_ratio_and_each_step_accumulates_under_amp"]),
    Sabotage("lr finder never stops on divergence", "utils/recipe/lr_finder.py",
             "if not math.isfinite(smoothed) or smoothed > diverge * best:", "if False:",
             ["tests/test_lr_finder.py::test_the_command_writes_the_curve_and_prints_the_override_but_no_run"]),
    Sabotage("lr finder losses of one process", "utils/recipe/lr_finder.py",
             "mean = dist.all_reduce_sum(torch.as_tensor(", "mean = (torch.as_tensor(",
             ["tests/test_lr_finder.py::test_under_torchrun_the_processes_agree_with_one_process_at_the_same_global_batch"]),
    Sabotage("k-fold ignores a better average", "utils/checkpoint/top_k.py",
             'if value is not None and (value < best if mode == "min" else value > best):', "if False:",
             ["tests/test_averaging.py::test_kfold_predicts_each_fold_with_the_better_of_model_best_and_the_average"]),
    Sabotage("distillation: teacher rows by position, not by id", "utils/data/teacher.py",
             "found = [(i, rows.get(str(dataset.sample_id(i)))) for i in range(len(dataset))]",
             "found = [(i, i if i < len(values) else None) for i in range(len(dataset))]",
             ["tests/test_distillation.py::test_each_batch_gets_its_own_samples_teacher_rows"]),
    Sabotage("distillation: no T² scaling", "utils/recipe/distillation.py",
             "return (teacher_log.exp() * (teacher_log - student_log)).sum(dim=1) * temperature ** 2",
             "return (teacher_log.exp() * (teacher_log - student_log)).sum(dim=1)",
             ["tests/test_distillation.py::test_kl_term_equals_hinton_by_hand"]),
    Sabotage("distillation: mixup leaves the teacher rows unmixed", "utils/recipe/mixup.py",
             "return data, soft, self._mix_rows(rows, data, shape, seed) if mixed else rows",
             "return data, soft, rows",
             ["tests/test_distillation.py::test_mixup_mixes_the_teacher_rows_with_the_labels_pairs_and_lambda"]),
    Sabotage("pseudo-labels: weight ignored", "utils/data/train_targets.py",
             "hard = (self._per_sample_base(output, true) * target.weight).mean()",
             "hard = self._per_sample_base(output, true).mean()",
             ["tests/test_distillation.py::test_pseudo_label_weight_scales_each_samples_loss"]),
    Sabotage("pseudo-labels leak into the validation split", "base/base_data_loader.py",
             'labelled = getattr(dataset, "labelled", dataset)', "labelled = dataset",
             ["tests/test_pseudo_labels.py::test_pseudo_labelled_samples_stay_out_of_a_fractional_validation_split"]),
    Sabotage("EMA without its warmup", "utils/recipe/ema.py",
             "return min(self.decay, 1.0 - (1.0 + self.num_updates) ** (-2.0 / 3.0))", "return self.decay",
             ["tests/test_recipe_guarantees.py::test_ema_warmup_follows_its_closed_form_then_the_decay"]),
    Sabotage("EMA copies the BatchNorm buffers", "utils/recipe/ema.py",
             "if self.num_updates == 0 or not ema_tensor.is_floating_point():",
             "if self.num_updates == 0 or not ema_tensor.is_floating_point() or not tensor.requires_grad:",
             ["tests/test_recipe_guarantees.py::test_ema_averages_the_batchnorm_buffers_with_the_weights"]),
    Sabotage("k-fold predicts out-of-fold with the raw weights", "kfold_train.py",
             "load_model_weights(trainer.raw_model, model_weights(checkpoint), best_path)",
             "load_model_weights(trainer.raw_model, model_weights(checkpoint, use_ema=False), best_path)",
             ["tests/test_tune_guarantees.py::test_tune_kfold_predicts_out_of_fold_with_the_ema_weights_it_selected"]),
    Sabotage("MixUp draws once per epoch", "utils/recipe/mixup.py",
             "sample_seeds(self.seed, epoch, [batch_idx * 65536 + self.rank])",
             "sample_seeds(self.seed, epoch, [self.rank])",
             ["tests/test_recipe_guarantees.py::test_every_batch_and_epoch_gets_a_fresh_draw"]),
    Sabotage("MixUp soft targets from another draw", "utils/recipe/mixup.py",
             "data, soft = self.mix(data, target)", "data, soft = self.mix(data, target)[0], self.mix(data, target)[1]",
             ["tests/test_recipe_guarantees.py::test_soft_targets_are_mixed_with_the_inputs_permutation_and_lambda"]),
    Sabotage("MixUp stops before off_epoch", "utils/recipe/mixup.py",
             "epoch <= self.off_epoch", "epoch < self.off_epoch",
             ["tests/test_recipe_guarantees.py::test_off_epoch_is_the_last_epoch_that_mixes"]),
    Sabotage("DDP not rebuilt after the unfreeze", "base/base_trainer.py",
             "if self.freezer.set_epoch(epoch):", "if self.freezer.set_epoch(epoch) and self.freezer.frozen:",
             ["tests/test_freezing_ddp.py::test_after_the_unfreeze_every_process_keeps_the_same_backbone"]),
    Sabotage("balanced sampler draws the same samples every epoch", "utils/data/samplers.py",
             "rng = np.random.default_rng([self.seed % 2**32, self.epoch])",
             "rng = np.random.default_rng([self.seed % 2**32, 0])",
             ["tests/test_recipe_guarantees.py::test_the_balanced_sampler_draws_other_samples_every_epoch"]),
    Sabotage("balanced pos_weight is positives over negatives", "utils/data/class_weights.py",
             "return ((len(targets) - positives) / positives).tolist()",
             "return (positives / (len(targets) - positives)).tolist()",
             ["tests/test_recipe_guarantees.py::test_balanced_pos_weight_is_negatives_over_positives_of_the_training_part"]),
    Sabotage("multi-label ensembles average logits", "model/task.py",
             "probs = torch.stack([o.float().sigmoid() for o in outputs]).mean(dim=0).clamp(1e-7, 1 - 1e-7)",
             "probs = torch.stack([o.float() for o in outputs]).mean(dim=0).sigmoid().clamp(1e-7, 1 - 1e-7)",
             ["tests/test_recipe_guarantees.py::test_multilabel_ensembles_and_tta_average_the_probabilities"]),
    Sabotage("multi-head ensembles take one softmax over all heads", "model/multihead.py",
             "return torch.cat([BaseTask.combine(self, [o[:, s] for o in outputs]) for s in self.slices], dim=1)",
             "return BaseTask.combine(self, outputs)",
             ["tests/test_recipe_guarantees.py::test_multihead_ensembles_and_tta_average_the_probabilities_of_each_head"]),
    Sabotage("tune_summary.csv sorted against the direction", "utils/tune/report.py",
             'descending = study.direction.name == "MAXIMIZE"', 'descending = study.direction.name == "MINIMIZE"',
             ["tests/test_tune_guarantees.py::test_summary_is_best_first_and_best_config_is_the_best_trials"]),
    Sabotage("best_config.json is the last finished trial's", "utils/tune/report.py",
             'write_json(study.best_trial.user_attrs["config"], p)', 'write_json(complete[-1].user_attrs["config"], p)',
             ["tests/test_tune_guarantees.py::test_summary_is_best_first_and_best_config_is_the_best_trials"]),
    Sabotage("the pruner hears the best value, not the epoch's", "utils/tune/study.py",
             "self.trial.report(value, step)", "self.trial.report(best, step)",
             ["tests/test_tune_guarantees.py::test_the_pruner_receives_every_epochs_value"]),
    Sabotage("resume keeps the old weight decay and momentum", "utils/checkpoint/resume_rates.py",
             'group.update({key: value for key, value in new.items() if key not in ("lr", "initial_lr")})', "pass",
             ["tests/test_resume_overrides.py::test_weight_decay_and_momentum_changed_on_resume_reach_every_group"]),
    Sabotage("--lr on resume gives every group the same rate", "utils/checkpoint/resume_rates.py",
             'group["lr"] = new.get("initial_lr", new["lr"])',
             'group["lr"] = new_groups[0].get("initial_lr", new_groups[0]["lr"])',
             ["tests/test_resume_overrides.py::test_lr_on_resume_keeps_the_ratio_between_the_groups"]),
    Sabotage("--lr sets the default group alone", "config_parser.py",
             "modification = scaled_group_rates(config, args.lr) | modification", "pass",
             ["tests/test_resume_overrides.py::test_lr_on_resume_keeps_the_ratio_between_the_groups"]),
    Sabotage("stratify may change on resume", "utils/checkpoint/resume.py",
             '    "data_loader.args.stratify": "the split into training and validation samples",\n', "",
             ["tests/test_resume_overrides.py::test_a_change_of_the_split_is_refused_in_one_line"]),
    Sabotage("group_split may change on resume", "utils/checkpoint/resume.py",
             '    "data_loader.args.group_split": "the split into training and validation samples",\n', "",
             ["tests/test_resume_overrides.py::test_a_change_of_the_split_is_refused_in_one_line"]),
    Sabotage("tune --kfold folds without groups or stratification labels", "tune.py",
             "folds, groups = build_folds(config, train_dataset)",
             "from kfold_train import make_folds; folds, groups = make_folds(train_dataset.targets, "
             "len(train_dataset), config['kfold']['n_splits'], True, True, config['seed']), None",
             ["tests/test_tune_guarantees.py::test_tune_kfold_of_a_regression_keeps_every_group_in_one_fold"]),
    Sabotage("the fold builder ignores the groups", "kfold_train.py",
             'groups = getattr(train_dataset, "groups", None) if options["group"] else None', "groups = None",
             ["tests/test_tune_guarantees.py::test_tune_kfold_of_a_regression_keeps_every_group_in_one_fold"]),
    Sabotage("the fold builder stratifies on raw targets", "kfold_train.py",
             'labels = stratification_labels(config.task, train_dataset, options["n_bins"])',
             "labels = train_dataset.targets",
             ["tests/test_tune_guarantees.py::test_tune_kfold_of_a_regression_keeps_every_group_in_one_fold"]),
    Sabotage("analysis: inference ignores calibration.json", "inference.py",
             "        models = calibrated(models, config, args.resume, paths)", "        pass",
             ["tests/test_analysis_runs.py::test_inference_applies_the_temperature_of_an_overconfident_run"]),
    Sabotage("analysis: calibration error without the bin weights", "utils/analysis/calibration.py",
             'return float((stats["count"][filled] / len(targets) * gap).sum())', "return float(gap.mean())",
             ["tests/test_analysis.py::test_temperature_undoes_overconfidence_and_lowers_the_error"]),
    Sabotage("analysis: temperature multiplies the logits", "utils/analysis/calibration.py",
             "scaled = logits[start:start + 16384].astype(np.float64) / temperature",
             "scaled = logits[start:start + 16384].astype(np.float64) * temperature",
             ["tests/test_analysis.py::test_temperature_undoes_overconfidence_and_lowers_the_error"]),
    Sabotage("analysis: McNemar without continuity correction", "utils/analysis/compare.py",
             "statistic = (abs(b - c) - 1) ** 2 / n", "statistic = (b - c) ** 2 / n",
             ["tests/test_analysis.py::test_mcnemar_p_value_equals_scipy"]),
    Sabotage("analysis: worst samples are the lowest losses", "utils/analysis/classification.py",
             "chosen = np.argpartition(-losses, top - 1)[:top]", "chosen = np.argpartition(losses, top - 1)[:top]",
             ["tests/test_analysis.py::test_worst_samples_are_the_highest_losses"]),
    Sabotage("async checkpoint: the loop waits for the write", "utils/checkpoint/writer.py",
             "        if wait or not self.background:", "        if True:",
             ["tests/test_speed.py::test_training_goes_on_while_a_checkpoint_is_written"]),
    Sabotage("async checkpoint: the live tensors written, not a copy", "utils/checkpoint/writer.py",
             "            state = self._snapshot.copy(state)  # training waits for this copy only", "            pass",
             ["tests/test_speed.py::test_the_snapshot_is_taken_at_the_save"]),
    Sabotage("data_wait: the wait for a batch not counted", "utils/data/timing.py",
             "            self.waited += time.perf_counter() - started\n            yield batch",
             "            yield batch",
             ["tests/test_speed.py::test_a_slow_dataset_shows_in_data_wait_and_warns_once"]),
    Sabotage("data_wait: the input-bound warning every epoch", "utils/data/timing.py",
             "if data_wait > INPUT_BOUND and not self.warned:", "if data_wait > INPUT_BOUND:",
             ["tests/test_speed.py::test_a_slow_dataset_shows_in_data_wait_and_warns_once"]),
    Sabotage("on_device: batches in index order, not the sampler's", "utils/data/on_device.py",
             "        on_device = torch.from_numpy(indices).to(self.device)",
             "        on_device = torch.from_numpy(np.sort(indices)).to(self.device)",
             ["tests/test_speed.py::test_on_device_batches_come_in_the_cpu_order"]),
    Sabotage("on_device: one random choice for the whole batch", "utils/data/on_device.py",
             "    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53",
             "    return np.full(len(x), (int(x[0]) >> 11) / 2.0**53)",
             ["tests/test_speed.py::test_on_device_augmentation_is_per_sample_and_seeded"]),
    Sabotage("a failed write the loop waited for stops the main process alone", "utils/checkpoint/training_state.py",
             "            error = failure", "            raise",
             ["tests/test_speed.py::test_a_failed_write_under_ddp_stops_every_process"]),
]


def run_one(sabotage: Sabotage) -> str:
    """CAUGHT (with the first error line of the failing test), SURVIVED or STALE."""
    with tempfile.TemporaryDirectory(prefix="mutation_") as temp:
        copy = Path(temp) / "repo"
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns("saved", ".git", "__pycache__", ".pytest_cache",
                                                                  "wandb", "*.pyc"))
        path = copy / sabotage.file
        text = path.read_text() if path.is_file() else ""
        if text.count(sabotage.old) != 1:
            return "STALE"
        path.write_text(text.replace(sabotage.old, sabotage.new))
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0",
                                 *sabotage.tests], cwd=copy, capture_output=True, text=True)
        if result.returncode not in (0, 1):  # 2-5: interrupted, internal or usage error, nothing collected
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
            return f"ERROR (pytest exit {result.returncode})"
        if result.returncode == 0:
            return "SURVIVED"
        reasons = [line[1:].strip() for line in result.stdout.splitlines() if line.startswith("E ")]
        reasons = [reason for reason in reasons if reason]
        return "CAUGHT" + (f": {reasons[0][:100]}" if reasons else "")


def main(words: list[str]) -> int:
    chosen = [s for s in SABOTAGES if not words or any(word in s.name for word in words)]
    outcomes = {}
    for sabotage in chosen:
        started = time.monotonic()
        outcomes[sabotage.name] = run_one(sabotage)
        outcome, _, reason = outcomes[sabotage.name].partition(": ")
        print(f"{outcome:<9} {sabotage.name}  ({time.monotonic() - started:.0f} s){'  ' + reason if reason else ''}",
              flush=True)
    caught = sum(outcome.startswith("CAUGHT") for outcome in outcomes.values())
    print(f"{caught} of {len(outcomes)} sabotages caught")
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
