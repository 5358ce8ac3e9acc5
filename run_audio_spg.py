"""Fine-tune an audio classifier (Wav2Vec2 / HuBERT / WavLM) with Sequential Policy Gradient.

The counterpart of HF's examples/pytorch/audio-classification/run_audio_classification.py, trained with SPGTrainer.
Audio comes from the hub (dataset_name) or from a local folder of clips (data_dir); see spg_hf/tasks/audio.py.

    python run_audio_spg.py configs/audio/fsdd_wav2vec2_tiny_cpu.yaml
    python run_audio_spg.py --model_name_or_path facebook/wav2vec2-base --dataset_name superb \\
        --dataset_config_name ks --output_dir out --do_train --do_eval --max_length_seconds 1
"""

from __future__ import annotations

import logging

from transformers import set_seed

from spg_hf import SPGTrainer
from spg_hf.tasks.audio import (
    EVAL,
    TRAIN,
    AudioModelArguments,
    DataTrainingArguments,
    load_feature_extractor,
    load_model,
    make_compute_metrics,
    prepare_datasets,
)
from spg_hf.tasks.cli import (
    ScriptTrainingArguments,
    parse_arguments,
    prepare_output_dir,
    report_metrics,
    run_main,
    setup_logging,
    train_and_save,
    write_model_card,
)

logger = logging.getLogger("spg_hf")


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_arguments(
        (AudioModelArguments, DataTrainingArguments, ScriptTrainingArguments), argv
    )
    setup_logging(training_args)
    # The transforms read the raw audio column, which Trainer would otherwise drop as unknown to the model.
    training_args.remove_unused_columns = False
    last_checkpoint = prepare_output_dir(training_args)
    set_seed(training_args.seed)

    feature_extractor = load_feature_extractor(model_args)
    raw_datasets, label_list = prepare_datasets(data_args, model_args, training_args, feature_extractor)
    model = load_model(model_args, label_list)

    trainer = SPGTrainer(
        model=model,
        args=training_args,
        train_dataset=raw_datasets.get(TRAIN),
        eval_dataset=raw_datasets.get(EVAL),
        compute_metrics=make_compute_metrics(),
        processing_class=feature_extractor,
    )

    metrics = {}
    if training_args.do_train:
        metrics |= train_and_save(trainer, last_checkpoint)

    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        report_metrics(trainer, "eval", eval_metrics)
        metrics |= eval_metrics

    if training_args.do_train:
        write_model_card(trainer, tasks="audio-classification", dataset=data_args.dataset_name)
    return metrics


if __name__ == "__main__":
    run_main(main)
