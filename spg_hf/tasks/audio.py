"""Audio classification data and models for `run_audio_spg.py` (HF's run_audio_classification.py, trained with SPG).

Audio comes from the hub (e.g. SUPERB keyword spotting) or from a local folder of audio files whose labels come
from sub-folder names or a file-name regex. Clips are decoded with soundfile (datasets 5.x would need torchcodec),
resampled with scipy to the feature extractor's rate, and cropped on the fly: random crops for training, whole
clips for evaluation.
"""

from __future__ import annotations

import io
import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import soundfile
from scipy.signal import resample_poly
from transformers import (
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    EvalPrediction,
    PreTrainedModel,
    SequenceFeatureExtractor,
    TrainingArguments,
    Wav2Vec2FeatureExtractor,
)

from spg_hf.tasks.cli import ModelArguments, expand_path, resolve_package_path
from spg_hf.tasks.metrics import expected_calibration_error, load_hub_metric

logger = logging.getLogger("spg_hf")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
TRAIN, EVAL = "train", "eval"


@dataclass
class AudioModelArguments(ModelArguments):
    """`ModelArguments` plus the audio options of HF's run_audio_classification.py."""

    feature_extractor_name: str | None = field(
        default=None,
        metadata={
            "help": "Feature extractor (hub id or folder with preprocessor_config.json), if not the one saved "
            "with model_name_or_path / config_name."
        },
    )
    default_feature_extractor: bool = field(
        default=False,
        metadata={
            "help": "Build Wav2Vec2FeatureExtractor() with its defaults (16 kHz, normalised clips, no attention "
            "mask) instead of loading one: for random models built from a config that has no preprocessor_config.json."
        },
    )
    freeze_feature_encoder: bool = field(
        default=True, metadata={"help": "Freeze the convolutional feature encoder (as HF's script does by default)."}
    )
    attention_mask: bool | None = field(
        default=None,
        metadata={
            "help": "Pass attention masks to the model. Default: what the feature extractor says "
            "(return_attention_mask; False for wav2vec2-base, whose group-norm encoder wants zero-padded input)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer_name is not None:
            raise ValueError("tokenizer_name: audio models have a feature extractor; use feature_extractor_name.")
        if self.default_feature_extractor and self.feature_extractor_name is not None:
            raise ValueError("Give feature_extractor_name or default_feature_extractor, not both.")
        self.feature_extractor_name = resolve_package_path(self.feature_extractor_name)


@dataclass
class DataTrainingArguments:
    """Where the audio comes from and how it is split and cut.

    Give either `dataset_name` (a hub dataset with an audio column and a label column) or `data_dir` (a local
    folder of .wav/.flac/.ogg files, searched recursively). For a local folder, the label of a file is its
    sub-folder name (data_dir/<label>/clip.wav) unless `label_pattern` takes it from the file name, and the
    evaluation split is chosen by exactly one of: `eval_speakers` + `speaker_pattern`, `eval_list_file`,
    `eval_file_pattern`. The rest is the training split.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. 'superb'."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. 'ks'."})
    train_split_name: str = field(default="train", metadata={"help": "Hub split to train on."})
    eval_split_name: str = field(default="validation", metadata={"help": "Hub split to evaluate on."})
    audio_column_name: str = field(
        default="audio", metadata={"help": "Column with the audio (for local folders: the name given to it)."}
    )
    label_column_name: str = field(
        default="label", metadata={"help": "Column with the labels (for local folders: the name given to it)."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Local folder of audio files instead of dataset_name; $VARS and ~ are expanded."},
    )
    label_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Regex searched in each file name whose first group is the label, e.g. '^(\\d+)_' gives 7 "
            "for FSDD's 7_jackson_32.wav. Default: the label is the name of the file's folder."
        },
    )
    label_list: list[str] | None = field(
        default=None,
        metadata={
            "help": "The classes, in label-id order. Default: the sorted labels found in the data. A file (or a "
            "hub row with a string label) whose label is not in the list is an error."
        },
    )
    speaker_pattern: str | None = field(
        default=None,
        metadata={"help": "Regex searched in each file name whose first group is the speaker, e.g. '^\\d+_([a-z]+)_'."},
    )
    eval_speakers: list[str] | None = field(
        default=None,
        metadata={"help": "Speakers (see speaker_pattern) whose files form the evaluation split, e.g. ['theo']."},
    )
    eval_list_file: str | None = field(
        default=None,
        metadata={
            "help": "Text file listing the evaluation files, one path relative to data_dir per line (as in Speech "
            "Commands' validation_list.txt); $VARS and ~ are expanded."
        },
    )
    eval_file_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Regex searched in each file's path relative to data_dir; matching files form the evaluation "
            "split. FSDD's own split (indices 0-4 are test): '_[0-4]\\.wav$'."
        },
    )
    max_length_seconds: float = field(
        default=20, metadata={"help": "Training clips longer than this are randomly cropped to it."}
    )
    eval_max_length_seconds: float | None = field(
        default=None,
        metadata={"help": "Cut evaluation clips after this many seconds. Default: whole clips, as HF's script."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on this many examples (a seeded random subset), for quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on this many examples (a seeded random subset), for quick runs."}
    )

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.data_dir is None):
            raise ValueError("Give exactly one of dataset_name (a hub dataset) and data_dir (a local folder).")
        self.data_dir = expand_path(self.data_dir, "data_dir")
        self.eval_list_file = expand_path(self.eval_list_file, "eval_list_file")
        for name in ("label_pattern", "speaker_pattern", "eval_file_pattern"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{name}={pattern!r} is not a valid regex: {error}.") from error
            if name != "eval_file_pattern" and compiled.groups < 1:
                raise ValueError(f"{name}={pattern!r} needs a (group) that captures the {name.split('_')[0]}.")
        if (self.eval_speakers is None) != (self.speaker_pattern is None):
            raise ValueError("eval_speakers and speaker_pattern go together: give both or neither.")
        split_options = [self.eval_speakers, self.eval_list_file, self.eval_file_pattern]
        if sum(option is not None for option in split_options) > 1:
            raise ValueError("Choose one evaluation split: eval_speakers, eval_list_file or eval_file_pattern.")
        if self.dataset_name is not None and any(option is not None for option in split_options + [self.label_pattern]):
            raise ValueError(
                "label_pattern, eval_speakers, eval_list_file and eval_file_pattern apply to data_dir only; "
                "hub datasets use train_split_name / eval_split_name."
            )
        if self.max_length_seconds <= 0:
            raise ValueError(f"max_length_seconds must be > 0, got {self.max_length_seconds}.")
        if self.eval_max_length_seconds is not None and self.eval_max_length_seconds <= 0:
            raise ValueError(f"eval_max_length_seconds must be > 0, got {self.eval_max_length_seconds}.")

    @property
    def has_eval_split(self) -> bool:
        return any(option is not None for option in (self.eval_speakers, self.eval_list_file, self.eval_file_pattern))


# ---------------------------------------------------------------------------------------------------------------
# Local folders: file lists, labels, splits


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


# ---------------------------------------------------------------------------------------------------------------
# Hub datasets


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


# ---------------------------------------------------------------------------------------------------------------
# Labels


def _describe(audio: Any) -> str:
    path = audio if isinstance(audio, str) else (audio or {}).get("path")
    return str(path) if path else "<clip without a path>"


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
                    f"{_describe(dataset[index][audio_column])} ({split} split) has label {label!r}, "
                    f"which is not in label_list {names}."
                )
    return dataset_dict.cast_column(label_column, datasets.ClassLabel(names=names)), names


# ---------------------------------------------------------------------------------------------------------------
# Decoding, resampling, cropping


def _open(audio: Any) -> Any:
    """What soundfile reads: a path, or the bytes of an undecoded datasets.Audio value."""
    if isinstance(audio, str):
        return audio
    if audio.get("bytes") is not None:
        return io.BytesIO(audio["bytes"])
    return audio["path"]


def resample(wav: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy) from `orig_rate` to `target_rate` Hz; length becomes ceil(n * target / orig)."""
    if orig_rate == target_rate:
        return wav
    divisor = gcd(orig_rate, target_rate)
    return resample_poly(wav, target_rate // divisor, orig_rate // divisor).astype(np.float32)


def load_audio(audio: Any, sampling_rate: int) -> np.ndarray:
    """Decode a path or undecoded datasets.Audio value to mono float32 at `sampling_rate` Hz."""
    try:
        wav, rate = soundfile.read(_open(audio), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, OSError) as error:
        raise ValueError(f"Cannot read audio {_describe(audio)}: {error}") from error
    return resample(wav.mean(axis=1), rate, sampling_rate)


def check_audio_readable(dataset: datasets.Dataset, audio_column: str, split: str) -> None:
    """Raise, naming the file, for the first clip soundfile cannot open or that holds no samples."""
    # In batches: a hub split's audio bytes can be larger than memory.
    for batch in dataset.select_columns([audio_column]).iter(batch_size=1000):
        for audio in batch[audio_column]:
            try:
                info = soundfile.info(_open(audio))
            except (soundfile.SoundFileError, OSError) as error:
                raise ValueError(f"Cannot read audio {_describe(audio)} ({split} split): {error}") from error
            if info.frames == 0:
                raise ValueError(f"Audio {_describe(audio)} ({split} split) holds no samples.")


def random_crop(wav: np.ndarray, max_samples: int, rng: random.Random | None = None) -> np.ndarray:
    """A random window of `max_samples` samples (the whole clip if it is not longer)."""
    if len(wav) <= max_samples:
        return wav
    offset = (rng or random).randint(0, len(wav) - max_samples)
    return wav[offset : offset + max_samples]


class AudioTransform:
    """`set_transform` function: decode, resample, cut and featurise a batch of rows on the fly.

    Training draws crop offsets from the global `random` module, like HF's script: Trainer seeds it (set_seed)
    and reseeds it in each dataloader worker for every epoch, whereas a private generator would be copied into
    every worker and repeat the same crops.
    """

    def __init__(
        self,
        feature_extractor: SequenceFeatureExtractor,
        audio_column: str,
        label_column: str,
        max_length_seconds: float | None,
        crop_randomly: bool,
    ) -> None:
        self.feature_extractor = feature_extractor
        self.audio_column = audio_column
        self.label_column = label_column
        rate = feature_extractor.sampling_rate
        self.max_samples = None if max_length_seconds is None else int(round(max_length_seconds * rate))
        self.crop_randomly = crop_randomly

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rate = self.feature_extractor.sampling_rate
        wavs = [load_audio(audio, rate) for audio in batch[self.audio_column]]
        if self.max_samples is not None:
            wavs = [
                random_crop(wav, self.max_samples) if self.crop_randomly else wav[: self.max_samples] for wav in wavs
            ]
        # Padding (and the attention mask, where the extractor returns one) is left to the collator.
        inputs = self.feature_extractor(wavs, sampling_rate=rate, return_attention_mask=False)
        input_name = self.feature_extractor.model_input_names[0]
        return {input_name: inputs[input_name], "labels": list(batch[self.label_column])}


# ---------------------------------------------------------------------------------------------------------------
# Putting the data together


def prepare_datasets(
    data_args: DataTrainingArguments,
    model_args: ModelArguments,
    training_args: TrainingArguments,
    feature_extractor: SequenceFeatureExtractor,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Load, label, subsample and check the splits training_args asks for, then attach the on-the-fly transforms.

    Every check (files, labels, splits, readable audio) runs here, before a model is trained.
    """
    splits = [split for split, wanted in ((TRAIN, training_args.do_train), (EVAL, training_args.do_eval)) if wanted]
    if not splits:
        raise ValueError("Nothing to do: set do_train and/or do_eval.")
    found_labels = None
    if data_args.data_dir is not None:
        dataset_dict, found_labels = load_local_datasets(data_args, splits)
    else:
        dataset_dict = load_hub_datasets(data_args, model_args, splits)
    dataset_dict, label_list = encode_labels(
        dataset_dict, data_args.label_column_name, data_args.audio_column_name, data_args.label_list, found_labels
    )
    limits = {TRAIN: data_args.max_train_samples, EVAL: data_args.max_eval_samples}
    for split in splits:
        dataset = dataset_dict[split]
        if limits[split] is not None:
            dataset = dataset.shuffle(seed=training_args.seed).select(range(min(limits[split], len(dataset))))
        dataset = dataset.select_columns([data_args.audio_column_name, data_args.label_column_name])
        check_audio_readable(dataset, data_args.audio_column_name, split)
        dataset.set_transform(
            AudioTransform(
                feature_extractor,
                data_args.audio_column_name,
                data_args.label_column_name,
                data_args.max_length_seconds if split == TRAIN else data_args.eval_max_length_seconds,
                crop_randomly=split == TRAIN,
            )
        )
        dataset_dict[split] = dataset
        logger.info(f"{split} split: {len(dataset)} clips")
    return dataset_dict, label_list


# ---------------------------------------------------------------------------------------------------------------
# Feature extractor, model, metric


def load_feature_extractor(model_args: AudioModelArguments) -> SequenceFeatureExtractor:
    """The feature extractor named (or saved with the model/config), or Wav2Vec2's defaults when asked for."""
    if model_args.default_feature_extractor:
        feature_extractor = Wav2Vec2FeatureExtractor()
    else:
        source = model_args.feature_extractor_name or model_args.model_name_or_path or model_args.config_name
        try:
            feature_extractor = AutoFeatureExtractor.from_pretrained(source, **model_args.hub_kwargs())
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Cannot load a feature extractor from {source!r} ({error}). Set feature_extractor_name, or "
                "default_feature_extractor: true for Wav2Vec2FeatureExtractor's defaults."
            ) from error
    if model_args.attention_mask is not None:
        feature_extractor.return_attention_mask = model_args.attention_mask
    return feature_extractor


def load_model(model_args: AudioModelArguments, label_list: list[str]) -> PreTrainedModel:
    """AutoModelForAudioClassification: pre-trained weights, or random ones from config_name (+ config_overrides)."""
    config = model_args.load_config(
        num_labels=len(label_list),
        label2id={name: index for index, name in enumerate(label_list)},
        id2label=dict(enumerate(label_list)),
        finetuning_task="audio-classification",
    )
    model = model_args.load_model(AutoModelForAudioClassification, config)
    if model_args.freeze_feature_encoder:
        if not hasattr(model, "freeze_feature_encoder"):
            raise ValueError(f"freeze_feature_encoder: {type(model).__name__} has no feature encoder; set it to false.")
        model.freeze_feature_encoder()
    return model


def compute_accuracy(eval_pred: EvalPrediction) -> dict[str, float]:
    """Accuracy of the argmax over the logits, computed locally, and the expected calibration error."""
    accuracy = float(np.mean(predicted_ids(eval_pred) == eval_pred.label_ids))
    return {"accuracy": accuracy} | expected_calibration_error(eval_pred.predictions, eval_pred.label_ids)


def predicted_ids(eval_pred: EvalPrediction) -> np.ndarray:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return np.argmax(logits, axis=-1)


def make_compute_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer `compute_metrics`: evaluate's accuracy (as HF run_audio_classification) when the hub is reachable,
    else compute_accuracy; the expected calibration error either way."""
    hub_metric = load_hub_metric("accuracy")
    if hub_metric is None:
        return compute_accuracy

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        result = hub_metric.compute(predictions=predicted_ids(eval_pred), references=eval_pred.label_ids)
        calibration = expected_calibration_error(eval_pred.predictions, eval_pred.label_ids)
        return {name: float(value) for name, value in result.items()} | calibration

    return compute_metrics
