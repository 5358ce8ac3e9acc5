"""Audio clips on the fly: decoded with soundfile (datasets 5.x would need torchcodec), made mono, resampled with
scipy to the feature extractor's rate, cut (random crops for training, the start for evaluation) and featurised."""

from __future__ import annotations

import io
import random
from math import gcd
from typing import Any

import datasets
import numpy as np
import soundfile
from scipy.signal import resample_poly
from transformers import SequenceFeatureExtractor


def describe_clip(audio: Any) -> str:
    """A clip's path for messages, from a path or a datasets.Audio value."""
    path = audio if isinstance(audio, str) else (audio or {}).get("path")
    return str(path) if path else "<clip without a path>"


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
        raise ValueError(f"Cannot read audio {describe_clip(audio)}: {error}") from error
    return resample(wav.mean(axis=1), rate, sampling_rate)


def check_audio_readable(dataset: datasets.Dataset, audio_column: str, split: str) -> None:
    """Raise, naming the file, for the first clip soundfile cannot open or that holds no samples."""
    # In batches: a hub split's audio bytes can be larger than memory.
    for batch in dataset.select_columns([audio_column]).iter(batch_size=1000):
        for audio in batch[audio_column]:
            try:
                info = soundfile.info(_open(audio))
            except (soundfile.SoundFileError, OSError) as error:
                raise ValueError(f"Cannot read audio {describe_clip(audio)} ({split} split): {error}") from error
            if info.frames == 0:
                raise ValueError(f"Audio {describe_clip(audio)} ({split} split) holds no samples.")


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
