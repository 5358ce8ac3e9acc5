"""Audio classification example: spg_hf/tasks/audio.py and run_audio_spg.py end to end on FSDD."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from datasets import Audio, ClassLabel, Dataset
from helpers import FSDD_DIR, REPO
from transformers import AutoModelForAudioClassification, DataCollatorWithPadding

from spg_hf import SPGTrainingArguments
from spg_hf.tasks.audio import (
    AudioModelArguments,
    AudioTransform,
    DataTrainingArguments,
    label_of,
    list_audio_files,
    load_audio,
    load_feature_extractor,
    load_local_datasets,
    load_model,
    prepare_datasets,
    random_crop,
    resample,
    speaker_of,
    split_files,
)

TINY_WAV2VEC2 = REPO / "configs" / "audio" / "tiny_wav2vec2"
needs_fsdd = pytest.mark.skipif(not FSDD_DIR.is_dir(), reason=f"FSDD not found at {FSDD_DIR}; set FSDD_DIR")
FSDD_SPEAKERS = {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
DIGIT = r"^(\d+)_"
SPEAKER = r"^\d+_([a-z]+)_"


def _load_script():
    spec = importlib.util.spec_from_file_location("run_audio_spg", REPO / "run_audio_spg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_audio_spg = _load_script()


def write_tone(path: Path, seconds: float = 0.3, rate: int = 8000, frequency: float = 440.0, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.5 * np.sin(2 * np.pi * frequency * t)
    soundfile.write(path, np.stack([wav] * channels, axis=1) if channels > 1 else wav, rate)
    return path


def data_args(**overrides) -> DataTrainingArguments:
    return DataTrainingArguments(**{"data_dir": str(FSDD_DIR), "label_pattern": DIGIT, **overrides})


def tone_folder(root: Path, names: list[str]) -> Path:
    for name in names:
        write_tone(root / name)
    return root


def run_config(tmp_path: Path, **settings) -> dict[str, float]:
    """Run the script on a YAML config: a tiny random Wav2Vec2 on local data (FSDD unless data_dir is given)."""
    config = {
        "config_name": str(TINY_WAV2VEC2),
        "data_dir": str(FSDD_DIR),
        "label_pattern": DIGIT,
        "speaker_pattern": SPEAKER,
        "eval_speakers": ["theo"],
        "max_length_seconds": 1.0,
        "freeze_feature_encoder": False,
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "do_eval": True,
        "report_to": "none",
        "dataloader_pin_memory": False,
        "spg_dropout": 0.2,
        **settings,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_audio_spg.main([str(path)])


# ----------------------------------------------------------------------------------------------------------------
# Decoding, resampling, cropping


def test_resample_doubles_length_and_keeps_the_pitch():
    rate, target = 8000, 16000
    tone = np.sin(2 * np.pi * 440.0 * np.arange(4000) / rate).astype(np.float32)
    out = resample(tone, rate, target)
    assert out.dtype == np.float32 and len(out) == 8000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.fft.rfftfreq(len(out), 1 / target)[spectrum.argmax()] == pytest.approx(440.0, abs=2.0)
    assert resample(tone, rate, rate) is tone
    assert len(resample(tone[:1001], 44100, 16000)) == math.ceil(1001 * 16000 / 44100)


def test_load_audio_decodes_to_mono_at_the_target_rate(tmp_path):
    stereo = write_tone(tmp_path / "stereo.wav", seconds=0.25, rate=8000, channels=2)
    wav = load_audio(str(stereo), 16000)
    assert wav.ndim == 1 and len(wav) == 4000
    undecoded = {"bytes": stereo.read_bytes(), "path": "stereo.wav"}
    np.testing.assert_allclose(load_audio(undecoded, 16000), wav)


def test_random_crop_cuts_long_clips_only():
    wav = np.arange(30000, dtype=np.float32)
    rng = random.Random(0)
    crops = [random_crop(wav, 16000, rng) for _ in range(20)]
    assert all(len(crop) == 16000 for crop in crops)
    assert all(np.array_equal(crop, np.arange(crop[0], crop[0] + 16000)) for crop in crops)
    offsets = [int(crop[0]) for crop in crops]
    assert len(set(offsets)) > 10 and min(offsets) >= 0 and max(offsets) <= 30000 - 16000
    repeat = random.Random(0)
    assert [int(random_crop(wav, 16000, repeat)[0]) for _ in range(20)] == offsets
    short = np.ones(1000, dtype=np.float32)
    assert random_crop(short, 16000, rng) is short


def test_transform_crops_training_clips_and_keeps_eval_clips_whole(tmp_path):
    long_clip = str(write_tone(tmp_path / "long.wav", seconds=2.0))
    short_clip = str(write_tone(tmp_path / "short.wav", seconds=0.5))
    extractor = load_feature_extractor(AudioModelArguments(config_name=str(TINY_WAV2VEC2)))
    batch = {"audio": [long_clip, short_clip], "label": [3, 1]}
    train = AudioTransform(extractor, "audio", "label", max_length_seconds=1.0, crop_randomly=True)(batch)
    assert [len(x) for x in train["input_values"]] == [16000, 8000] and train["labels"] == [3, 1]
    whole = AudioTransform(extractor, "audio", "label", max_length_seconds=None, crop_randomly=False)(batch)
    assert [len(x) for x in whole["input_values"]] == [32000, 8000]
    cut = AudioTransform(extractor, "audio", "label", max_length_seconds=0.75, crop_randomly=False)(batch)
    np.testing.assert_allclose(
        cut["input_values"][0], extractor(load_audio(long_clip, 16000)[:12000])["input_values"][0]
    )


@pytest.mark.parametrize("attention_mask", [None, True])
def test_attention_mask_only_where_the_extractor_wants_it(tmp_path, attention_mask):
    extractor = load_feature_extractor(
        AudioModelArguments(config_name=str(TINY_WAV2VEC2), attention_mask=attention_mask)
    )
    features = [{"input_values": np.ones(n, dtype=np.float32), "labels": 0} for n in (100, 60)]
    batch = DataCollatorWithPadding(extractor)(features)
    assert batch["input_values"].shape == (2, 100)
    assert ("attention_mask" in batch) == bool(attention_mask)


# ----------------------------------------------------------------------------------------------------------------
# Labels and splits


def test_labels_from_file_names_and_folders(tmp_path):
    assert label_of(Path("7_jackson_32.wav"), DIGIT) == "7"
    assert label_of(Path("sub/10_theo_3.wav"), DIGIT) == "10"
    assert label_of(Path("yes/a1b2_nohash_0.wav"), None) == "yes"
    assert speaker_of(Path("7_jackson_32.wav"), SPEAKER) == "jackson"
    root = tone_folder(tmp_path / "clips", ["yes/a.wav", "yes/b.wav", "no/c.wav", "up/d.flac"])
    datasets, labels = load_local_datasets(DataTrainingArguments(data_dir=str(root)), ["train"])
    assert labels == ["no", "up", "yes"]
    rows = zip(datasets["train"]["audio"], datasets["train"]["label"], strict=True)
    assert sorted((Path(audio).name, label) for audio, label in rows) == [
        ("a.wav", "yes"),
        ("b.wav", "yes"),
        ("c.wav", "no"),
        ("d.flac", "up"),
    ]


@needs_fsdd
def test_fsdd_labels_and_speaker_split_are_disjoint():
    files = list_audio_files(FSDD_DIR)
    assert len(files) == 3000
    assert {label_of(file, DIGIT) for file in files} == {str(digit) for digit in range(10)}
    train, evaluation = split_files(files, data_args(speaker_pattern=SPEAKER, eval_speakers=["theo", "george"]))
    train_speakers = {speaker_of(file, SPEAKER) for file in train}
    eval_speakers = {speaker_of(file, SPEAKER) for file in evaluation}
    assert eval_speakers == {"theo", "george"} and train_speakers == FSDD_SPEAKERS - eval_speakers
    assert len(evaluation) == 1000 and len(train) == 2000 and not set(train) & set(evaluation)


@needs_fsdd
def test_fsdd_index_split_and_list_file_split(tmp_path):
    files = list_audio_files(FSDD_DIR)
    train, evaluation = split_files(files, data_args(eval_file_pattern=r"_[0-4]\.wav$"))
    assert len(evaluation) == 300 and len(train) == 2700
    assert {int(file.stem.split("_")[2]) for file in evaluation} == set(range(5))
    listed = ["3_theo_7.wav", "0_george_0.wav"]
    list_file = tmp_path / "eval_list.txt"
    list_file.write_text("\n".join(listed) + "\n\n")
    train, evaluation = split_files(files, data_args(eval_list_file=str(list_file)))
    assert [str(file) for file in evaluation] == sorted(listed) and len(train) == 2998


def hub_style_folder(root: Path, labels: list, class_names: list[str] | None) -> Path:
    """Parquet train/validation splits shaped like a hub audio dataset: an Audio column holding wav bytes."""
    clips = [write_tone(root / "wavs" / f"clip{i}.wav", seconds=0.5 + 0.5 * i) for i in range(len(labels))]
    dataset = Dataset.from_dict(
        {"audio": [{"bytes": clip.read_bytes(), "path": clip.name} for clip in clips], "label": labels}
    ).cast_column("audio", Audio())
    if class_names is not None:
        dataset = dataset.cast_column("label", ClassLabel(names=class_names))
    for split in ("train", "validation"):
        dataset.to_parquet(str(root / "data" / f"{split}.parquet"))
    return root / "data"


@pytest.mark.parametrize(
    ("labels", "class_names", "expected"),
    [([1, 0, 1], ["down", "up"], ["down", "up"]), (["up", "down", "up"], None, ["down", "up"])],
)
def test_hub_style_dataset_is_decoded_from_bytes(tmp_path, labels, class_names, expected):
    folder = hub_style_folder(tmp_path, labels, class_names)
    extractor = load_feature_extractor(AudioModelArguments(config_name=str(TINY_WAV2VEC2)))
    training_args = SPGTrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, do_eval=True)
    data = DataTrainingArguments(dataset_name=str(folder), max_length_seconds=0.75)
    splits, label_list = prepare_datasets(
        data, AudioModelArguments(config_name=str(TINY_WAV2VEC2)), training_args, extractor
    )
    assert label_list == expected
    assert [len(row["input_values"]) for row in splits["eval"]] == [8000, 16000, 24000]
    assert [len(row["input_values"]) for row in splits["train"]] == [8000, 12000, 12000]
    assert [row["labels"] for row in splits["eval"]] == [1, 0, 1]
    with pytest.raises(ValueError, match="label_column_name='digit' is not a column of .* split 'train'"):
        prepare_datasets(
            DataTrainingArguments(dataset_name=str(folder), label_column_name="digit"),
            AudioModelArguments(config_name=str(TINY_WAV2VEC2)),
            training_args,
            extractor,
        )


# ----------------------------------------------------------------------------------------------------------------
# Models


def test_model_from_config_with_overrides_and_labels():
    model_args = AudioModelArguments(config_name=str(TINY_WAV2VEC2), config_overrides="classifier_proj_size=8")
    model = load_model(model_args, ["down", "up"])
    assert model.projector.out_features == 8 and model.classifier.out_features == 2
    assert model.config.id2label == {0: "down", 1: "up"} and model.config.label2id == {"down": 0, "up": 1}
    assert not any(p.requires_grad for p in model.wav2vec2.feature_extractor.parameters())
    with pytest.raises(ValueError, match=r"config_overrides: \['hiden_size'\] are not settings of Wav2Vec2Config"):
        load_model(AudioModelArguments(config_name=str(TINY_WAV2VEC2), config_overrides="hiden_size=8"), ["a"])


def test_feature_extractor_must_be_found_or_asked_for(tmp_path):
    (tmp_path / "config.json").write_text((TINY_WAV2VEC2 / "config.json").read_text())
    with pytest.raises(ValueError, match="default_feature_extractor"):
        load_feature_extractor(AudioModelArguments(config_name=str(tmp_path)))
    extractor = load_feature_extractor(AudioModelArguments(config_name=str(tmp_path), default_feature_extractor=True))
    assert extractor.sampling_rate == 16000 and extractor.return_attention_mask is False


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file or argument, before training


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere"):
        run_config(tmp_path, data_dir=str(tmp_path / "nowhere"))


def test_unset_data_dir_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_AUDIO_DIR", raising=False)
    with pytest.raises(ValueError, match="data_dir=.*NO_SUCH_AUDIO_DIR is not set"):
        run_config(tmp_path, data_dir="${NO_SUCH_AUDIO_DIR}/clips")


def test_unreadable_wav_is_named(tmp_path):
    root = tone_folder(tmp_path / "clips", ["1_bob_0.wav", "2_bob_0.wav", "1_amy_0.wav", "2_amy_0.wav"])
    (root / "2_bob_1.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(ValueError, match=r"Cannot read audio .*2_bob_1\.wav \(train split\)"):
        run_config(tmp_path, data_dir=str(root), eval_speakers=["amy"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("names", "settings", "message"),
    [
        (["1_bob_0.wav", "noise_bob_0.wav"], {}, r"noise_bob_0\.wav: file name does not match label_pattern"),
        (
            ["1_bob_0.wav", "2_amy_0.wav", "3_bob_0.wav"],
            dict(eval_speakers=["amy"], label_list=["1", "2"]),
            r"3_bob_0\.wav \(train split\) has label '3', which is not in label_list",
        ),
        (["1_bob_0.wav", "2_amy_0.wav"], {}, r"eval_speakers \['theo'\] have no files.*\['amy', 'bob'\]"),
    ],
    ids=["file name without label", "label outside label_list", "unknown eval speaker"],
)
def test_bad_clip_folder_names_the_file_or_setting(tmp_path, names, settings, message):
    root = tone_folder(tmp_path / "clips", names)
    with pytest.raises(ValueError, match=message):
        run_config(tmp_path, data_dir=str(root), **settings)


def test_file_in_data_dir_root_has_no_folder_label(tmp_path):
    root = tone_folder(tmp_path / "clips", ["yes/a.wav", "b.wav"])
    with pytest.raises(ValueError, match=r"b\.wav: file lies directly in data_dir"):
        load_local_datasets(DataTrainingArguments(data_dir=str(root)), ["train"])


def test_list_file_naming_missing_files(tmp_path):
    root = tone_folder(tmp_path / "clips", ["1_bob_0.wav", "2_amy_0.wav"])
    list_file = tmp_path / "eval.txt"
    list_file.write_text("2_amy_0.wav\n2_amy_9.wav\n")
    with pytest.raises(ValueError, match=r"eval_list_file .*eval\.txt names 1 audio file.*2_amy_9\.wav"):
        run_config(
            tmp_path, data_dir=str(root), eval_list_file=str(list_file), eval_speakers=None, speaker_pattern=None
        )


def test_eval_without_a_split(tmp_path):
    root = tone_folder(tmp_path / "clips", ["1_bob_0.wav", "2_amy_0.wav"])
    with pytest.raises(ValueError, match="do_eval with data_dir needs an evaluation split"):
        run_config(tmp_path, data_dir=str(root), eval_speakers=None, speaker_pattern=None)


def test_unknown_config_key(tmp_path):
    with pytest.raises(ValueError, match="config.yaml.*max_length_secs"):
        run_config(tmp_path, max_length_secs=1.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"label_pattern": r"^\d+_"}, "label_pattern=.* needs a \\(group\\)"),
        ({"speaker_pattern": "(["}, "speaker_pattern=.* is not a valid regex"),
        ({"eval_speakers": ["theo"]}, "eval_speakers and speaker_pattern go together"),
        ({"dataset_name": "superb"}, "exactly one of dataset_name"),
    ],
)
def test_bad_data_arguments(settings, message):
    with pytest.raises(ValueError, match=message):
        DataTrainingArguments(**{"data_dir": "clips", **settings})


# ----------------------------------------------------------------------------------------------------------------
# End to end


@needs_fsdd
def test_end_to_end_on_fsdd(tmp_path):
    metrics = run_config(
        tmp_path,
        max_train_samples=64,
        max_eval_samples=32,
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        save_strategy="no",
        seed=0,
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert all(math.isfinite(metrics[key]) for key in ("eval_accuracy", "eval_loss", "train_loss"))
    out = tmp_path / "out"
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]
    model, info = AutoModelForAudioClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.id2label == {digit: str(digit) for digit in range(10)}
    assert json.loads((out / "preprocessor_config.json").read_text())["sampling_rate"] == 16000
