"""Audio classification data and models for `run_audio_spg.py` (HF's run_audio_classification.py, trained with SPG).

Audio comes from the hub (e.g. SUPERB keyword spotting) or from a local folder of audio files whose labels come
from sub-folder names or a file-name regex (audio_files). Clips are decoded, resampled to the feature extractor's
rate and cropped on the fly (audio_clips): random crops for training, whole clips for evaluation. Their public names
are importable from here too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import (
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    EvalPrediction,
    PreTrainedModel,
    SequenceFeatureExtractor,
    TrainingArguments,
    Wav2Vec2FeatureExtractor,
)

from spg_hf.tasks.audio_clips import (
    AudioTransform,
    check_audio_readable,
    load_audio,
    random_crop,
    resample,
)
from spg_hf.tasks.audio_sources import (
    AUDIO_EXTENSIONS,
    EVAL,
    TRAIN,
    encode_labels,
    label_of,
    list_audio_files,
    load_hub_datasets,
    load_local_datasets,
    speaker_of,
    split_files,
)
from spg_hf.tasks.cli import ModelArguments, expand_path, resolve_package_path
from spg_hf.tasks.metrics import expected_calibration_error, load_hub_metric, logits_of

__all__ = [
    "AUDIO_EXTENSIONS",
    "EVAL",
    "TRAIN",
    "AudioModelArguments",
    "AudioTransform",
    "DataTrainingArguments",
    "check_audio_readable",
    "compute_accuracy",
    "encode_labels",
    "label_of",
    "list_audio_files",
    "load_audio",
    "load_feature_extractor",
    "load_hub_datasets",
    "load_local_datasets",
    "load_model",
    "make_compute_metrics",
    "predicted_ids",
    "prepare_datasets",
    "random_crop",
    "resample",
    "speaker_of",
    "split_files",
]

logger = logging.getLogger("spg_hf")


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
    return np.argmax(logits_of(eval_pred.predictions), axis=-1)


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
