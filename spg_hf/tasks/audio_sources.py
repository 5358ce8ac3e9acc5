"""Where the clips come from, as datasets of undecoded audio and labels: a local folder (its files, their labels from
sub-folder names or a file-name regex, the split into train and eval by speaker, a list file or a path pattern) or
a hub dataset; then the labels as class ids, checked against label_list."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from spg_hf.tasks.audio_clips import describe_clip
from spg_hf.tasks.cli import ModelArguments

if TYPE_CHECKING:  # audio.py, which defines the arguments, imports this module
    from spg_hf.tasks.audio import DataTrainingArguments

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
TRAIN, EVAL = "train", "eval"


def list_audio_files(data_dir: str | Path) -> list[Path]:
    """Audio files under `data_dir` (recursively), as sorted paths relative to it."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} does not exist or is not a folder.")
    files = sorted(
        path.relative_to(root) for path in root.rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()
    )
    if not files:
        raise ValueError(f"data_dir {root} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}).")
    return files


def _capture(pattern: str, relative_path: Path, what: str, argument: str) -> str:
    match = re.search(pattern, relative_path.name)
    if match is None or match.group(1) is None:
        raise ValueError(f"{relative_path}: file name does not match {argument}={pattern!r}, so it has no {what}.")
    return match.group(1)


def label_of(relative_path: Path, label_pattern: str | None) -> str:
    """The label of a file: the first group of `label_pattern` in its name, or else its folder's name."""
    if label_pattern is not None:
        return _capture(label_pattern, relative_path, "label", "label_pattern")
    if relative_path.parent == Path("."):
        raise ValueError(
            f"{relative_path}: file lies directly in data_dir, so it has no folder label; put it in "
            "data_dir/<label>/ or set label_pattern."
        )
    return relative_path.parent.name


def speaker_of(relative_path: Path, speaker_pattern: str) -> str:
    """The speaker of a file: the first group of `speaker_pattern` in its name."""
    return _capture(speaker_pattern, relative_path, "speaker", "speaker_pattern")


def _read_list_file(list_file: str, files: list[Path]) -> set[Path]:
    path = Path(list_file)
    if not path.is_file():
        raise FileNotFoundError(f"eval_list_file {path} does not exist.")
    listed = {Path(line.strip()) for line in path.read_text().splitlines() if line.strip()}
    missing = sorted(str(name) for name in listed - set(files))
    if missing:
        raise ValueError(
            f"eval_list_file {path} names {len(missing)} audio file(s) not found under data_dir, e.g. {missing[:3]}."
        )
    return listed


def split_files(files: list[Path], data_args: DataTrainingArguments) -> tuple[list[Path], list[Path]]:
    """Split relative paths into (train, eval) by speakers, a list file or a path pattern; order is kept."""
    if data_args.eval_speakers is not None:
        speakers = {file: speaker_of(file, data_args.speaker_pattern) for file in files}
        unknown = sorted(set(data_args.eval_speakers) - set(speakers.values()))
        if unknown:
            raise ValueError(
                f"eval_speakers {unknown} have no files in data_dir; speakers found: {sorted(set(speakers.values()))}."
            )
        in_eval = {file: speakers[file] in data_args.eval_speakers for file in files}
    elif data_args.eval_list_file is not None:
        listed = _read_list_file(data_args.eval_list_file, files)
        in_eval = {file: file in listed for file in files}
    elif data_args.eval_file_pattern is not None:
        in_eval = {file: re.search(data_args.eval_file_pattern, file.as_posix()) is not None for file in files}
    else:
        return list(files), []
    return [file for file in files if not in_eval[file]], [file for file in files if in_eval[file]]


def load_local_datasets(
    data_args: DataTrainingArguments, splits: Iterable[str]
) -> tuple[datasets.DatasetDict, list[str]]:
    """`data_dir` as a DatasetDict with the requested splits (audio as file paths, labels as strings), and the
    sorted labels of all its files."""
    files = list_audio_files(data_args.data_dir)
    labels = {file: label_of(file, data_args.label_pattern) for file in files}
    train_files, eval_files = split_files(files, data_args)
    by_split = {TRAIN: train_files, EVAL: eval_files}
    root = Path(data_args.data_dir)
    dataset_dict = datasets.DatasetDict()
    for split in splits:
        if split == EVAL and not data_args.has_eval_split:
            raise ValueError(
                "do_eval with data_dir needs an evaluation split: set eval_speakers + speaker_pattern, "
                "eval_list_file or eval_file_pattern."
            )
        if not by_split[split]:
            raise ValueError(f"The {split} split of data_dir {root} is empty; check the split options.")
        dataset_dict[split] = datasets.Dataset.from_dict(
            {
                data_args.audio_column_name: [str(root / file) for file in by_split[split]],
                data_args.label_column_name: [labels[file] for file in by_split[split]],
            }
        )
    # Label ids come from every file, not only the loaded splits, so an eval-only run numbers classes as training did.
    return dataset_dict, sorted(set(labels.values()))


def load_hub_datasets(
    data_args: DataTrainingArguments, model_args: ModelArguments, splits: Iterable[str]
) -> datasets.DatasetDict:
    """The requested splits of `dataset_name`, with the audio column left undecoded (bytes / paths)."""
    split_names = {TRAIN: data_args.train_split_name, EVAL: data_args.eval_split_name}
    dataset_dict = datasets.DatasetDict()
    for split in splits:
        dataset = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            split=split_names[split],
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        for argument in ("audio_column_name", "label_column_name"):
            column = getattr(data_args, argument)
            if column not in dataset.column_names:
                raise ValueError(
                    f"{argument}={column!r} is not a column of {data_args.dataset_name} split {split_names[split]!r}; "
                    f"columns: {dataset.column_names}."
                )
        if isinstance(dataset.features[data_args.audio_column_name], datasets.Audio):
            # datasets 5.x decodes Audio with torchcodec; we decode the bytes ourselves with soundfile.
            dataset = dataset.cast_column(data_args.audio_column_name, datasets.Audio(decode=False))
        dataset_dict[split] = dataset
    return dataset_dict


def encode_labels(
    dataset_dict: datasets.DatasetDict,
    label_column: str,
    audio_column: str,
    label_list: list[str] | None,
    found_labels: list[str] | None = None,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Turn the label column into a ClassLabel over `label_list` (default: `found_labels`, else the sorted labels
    of the loaded splits). A hub ClassLabel column keeps its own classes. A label outside the list is an error
    naming its file."""
    feature = next(iter(dataset_dict.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if label_list is not None and list(label_list) != feature.names:
            raise ValueError(
                f"label_list {label_list} differs from the dataset's own classes {feature.names}; "
                "leave label_list unset."
            )
        return dataset_dict, feature.names
    if feature != datasets.Value("string"):
        dataset_dict = dataset_dict.cast_column(label_column, datasets.Value("string"))
    if label_list is not None:
        names = [str(name) for name in label_list]
    elif found_labels is not None:
        names = found_labels
    else:
        names = sorted({label for dataset in dataset_dict.values() for label in dataset[label_column]})
    known = set(names)
    for split, dataset in dataset_dict.items():
        for index, label in enumerate(dataset[label_column]):
            if label not in known:
                raise ValueError(
                    f"{describe_clip(dataset[index][audio_column])} ({split} split) has label {label!r}, "
                    f"which is not in label_list {names}."
                )
    return dataset_dict.cast_column(label_column, datasets.ClassLabel(names=names)), names
