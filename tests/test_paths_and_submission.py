"""Labels and groups read from image paths, and the competition's submission file: every mistake one line."""
import pandas as pd
import pytest

from tests.conftest import IRIS_CONFIG, make_config, run_in_process
from tests.test_competition import face_mask_layout

# -- labels from paths: the classes and every mistake as one line --------------------------------------
PATTERN = r"^(?P<person>\d+)_(?P<gender>[a-z]+)_[^_/]+_(?P<age>\d+)/(?P<mask>[^/.]+)\.png$"
MASK_MAP = {"mask1": "wear", "mask2": "wear", "mask3": "wear", "mask4": "wear", "mask5": "wear",
            "incorrect_mask": "incorrect", "normal": "not_wear"}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    return root, face_mask_layout(root, persons=6, size=4)


def test_labels_and_groups_from_paths_with_a_map_and_bins(layout):
    from dataset.image_dataset import ImageDataset

    root, rows = layout
    dataset = ImageDataset(str(root), label_pattern=PATTERN, label_column=["mask", "gender", "age"],
                           group_column="person", label_bins={"age": [30, 60]},
                           label_map={"mask": MASK_MAP, "gender": {"male": "male", "female": "female"}})
    expected = {row["path"]: [row["mask"], row["gender"], row["age"]] for row in rows}
    got = {path.relative_to(root).as_posix(): target for path, target in zip(dataset.paths, dataset.targets)}
    assert got == expected
    assert dataset.groups == [path.relative_to(root).parts[0][:6] for path in dataset.paths]
    assert dataset.label_classes["age"] == ["<30", "30-59", ">=60"]
    assert dataset.label_classes["mask"] == ["wear", "incorrect", "not_wear"]
    single = ImageDataset(str(root), label_pattern=PATTERN, label_column="age", label_bins={"age": [30.5]})
    assert single.classes == ["<30.5", ">=30.5"]
    assert single.targets == [int(int(p.parent.name.split("_")[-1]) >= 30.5) for p in single.paths]


@pytest.mark.parametrize("args, expected", [
    ({"label_pattern": "(?P<x"}, "error: dataset.args.label_pattern: '(?P<x' is not a regular expression"),
    ({"label_pattern": r"(\d+)_"}, "error: dataset.args.label_pattern: '(\\\\d+)_' has no named group"),
    ({"label_column": "mask", "group_column": "id"}, "error: dataset.args.group_column: 'id' is not a named group"),
    ({"label_column": "mask", "label_map": {"mask": {"mask1": "wear"}}},
     "label_map.mask has no entry for 'incorrect_mask'"),
    ({"label_column": "age", "label_bins": {"age": [60, 30]}},
     "error: dataset.args.label_bins: 'age' must be a list of increasing numbers"),
    ({"label_column": "mask", "label_pattern": PATTERN.replace("[a-z]+", "male")}, "does not match label_pattern"),
    ({"label_map": {"mask": MASK_MAP}, "label_pattern": None}, "error: dataset.args.label_map: needs a label_pattern"),
])
def test_path_label_mistakes_are_one_error_line(layout, tmp_path, args, expected):
    root, _ = layout
    dataset_args = {"root": str(root), "label_pattern": PATTERN, "label_column": "mask"} | args
    config = make_config(tmp_path, IRIS_CONFIG, **{"dataset": {"type": "ImageDataset", "args": dataset_args}})
    result = run_in_process("train.py", "-c", str(config), "--dry-run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


def test_a_bin_no_file_falls_in_is_a_warning_naming_the_key(layout, caplog):
    from dataset.image_dataset import ImageDataset

    root, _ = layout
    ImageDataset(str(root), label_pattern=PATTERN, label_column="age", label_bins={"age": [30, 60, 100]})
    assert "label_bins.age: no file falls in the class(es) >=100" in caplog.text


def test_skip_unmatched_leaves_out_the_files_the_pattern_misses(layout, caplog):
    from dataset.image_dataset import ImageDataset

    root, rows = layout
    males = PATTERN.replace("[a-z]+", "male")
    dataset = ImageDataset(str(root), label_pattern=males, label_column="mask", skip_unmatched=True)
    assert len(dataset) == sum(row["gender"] == 0 for row in rows)
    assert "left out 21 file(s)" in caplog.text


# -- the submission's mistakes -------------------------------------------------------------------------
def test_a_missing_or_extra_image_is_one_error_naming_it(tmp_path):
    from utils.errors import DataError
    from utils.submission import match_rows

    files = ["eval/images/a.png", "eval/images/b.png", "eval/images/c.png"]
    assert match_rows(["c.png", "a", "b.png"], files, "info.csv") == [2, 0, 1]
    with pytest.raises(DataError, match=r"info.csv, line 3: no image 'd.png'"):
        match_rows(["a.png", "d.png", "b.png"], files, "info.csv")
    with pytest.raises(DataError, match=r"eval/images/c.png: is predicted but no row of info.csv names it"):
        match_rows(["a.png", "b.png"], files, "info.csv")


def test_the_submission_copies_the_csv_and_fills_its_rows_by_file_name(tmp_path):
    from utils.submission import read_submission_csv, write_submission

    pd.DataFrame({"id": ["eval/a.png", "eval/b.png", "eval/c.png"], "prediction": [5, 7, 9]}).to_csv(
        tmp_path / "predictions.csv", index=False)
    pd.DataFrame({"ImageID": ["c.png", "a.png", "b.png"], "ans": [0, 0, 0], "note": ["x", "", "007"]}).to_csv(
        tmp_path / "info.csv", index=False)
    options = {"csv": str(tmp_path / "info.csv"), "id_column": "ImageID", "column": "ans",
               "prediction_column": "prediction", "output": str(tmp_path / "out.csv")}
    write_submission(read_submission_csv(options), tmp_path / "predictions.csv", options)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines == ["ImageID,ans,note", "c.png,9,x", "a.png,5,", "b.png,7,007"]  # other columns as they were


@pytest.mark.parametrize("submission, expected", [
    ({"csv": "info.csv", "column": "ans"}, "inference.submission.id_column: is required but missing"),
    ({"csv": "info.csv", "id_column": "ImageID", "column": "ans", "colum": 1}, "inference.submission.colum: unknown"),
    ({"csv": "info.csv", "id_column": 3, "column": "ans"}, "inference.submission.id_column"),
])
def test_a_bad_submission_entry_is_one_error_naming_its_key(submission, expected):
    import copy

    from config_parser import ConfigParser
    from utils.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        ConfigParser(copy.deepcopy(IRIS_CONFIG) | {"inference": {"submission": submission}})
    assert str(error.value).startswith(expected)


def test_the_submission_csv_is_checked_before_anything_is_predicted(tmp_path):
    from utils.errors import ConfigError, DataError
    from utils.submission import read_submission_csv

    (tmp_path / "info.csv").write_text("ImageID,ans\na.png,\n")
    options = {"csv": str(tmp_path / "info.csv"), "id_column": "Id", "column": "ans"}
    with pytest.raises(ConfigError, match="inference.submission.id_column: 'Id' is not a column of .* ImageID, ans"):
        read_submission_csv(options)
    with pytest.raises(DataError, match="missing.csv: the submission CSV"):
        read_submission_csv(options | {"csv": str(tmp_path / "missing.csv")})
