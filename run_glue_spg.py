#!/usr/bin/env python
"""Fine-tune a model on a GLUE task with SPG: HuggingFace's run_glue.py, trained with SPGTrainer.

Settings come from one YAML/JSON config or from flags, with run_glue.py's names plus
ScriptTrainingArguments (SPGTrainingArguments and overwrite_output_dir):

    python run_glue_spg.py configs/glue/rte_minilm_cpu.yaml
    accelerate launch --config_file configs/accelerate/single_gpu.yaml \\
        run_glue_spg.py configs/glue/rte_bert_base_spg.yaml
    python run_glue_spg.py --model_name_or_path bert-base-uncased --task_name rte --do_train --do_eval \\
        --output_dir outputs/rte --spg_enabled false

Data: GLUE tsv files under data_dir (default: $GLUE_DIR), else the hub (nyu-mll/glue), or your own csv/json files
(train_file / validation_file / test_file). Task logic is in spg_hf/tasks/glue.py (and glue_*.py beside it).
"""

import logging
import os

from transformers import set_seed

from spg_hf import SPGTrainer
from spg_hf.tasks import glue
from spg_hf.tasks.cli import (
    ModelArguments,
    ScriptTrainingArguments,
    padding_collator,
    parse_arguments,
    prepare_output_dir,
    report_metrics,
    run_main,
    setup_logging,
    train_and_save,
    write_model_card,
)

logger = logging.getLogger("spg_hf.run_glue")


def main() -> None:
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, glue.DataTrainingArguments, ScriptTrainingArguments)
    )
    setup_logging(training_args)
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, n_gpu: {training_args.n_gpu}, "
        f"distributed: {training_args.parallel_mode.value == 'distributed'}, "
        f"mixed precision: {training_args.mixed_precision}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")
    last_checkpoint = prepare_output_dir(training_args)
    set_seed(training_args.seed)

    # Data: every file, column and label is checked here, before the model is even loaded.
    raw_datasets, task = glue.load_raw_datasets(data_args, training_args, model_args)
    raw_datasets = glue.limit_samples(raw_datasets, data_args)

    model, tokenizer = glue.load_model_and_tokenizer(model_args, task)
    datasets = glue.tokenize_datasets(raw_datasets, tokenizer, task, data_args, training_args)
    eval_splits = [split for split in datasets if split.startswith("validation")]
    test_splits = [split for split in datasets if split.startswith("test")]

    trainer = SPGTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets[eval_splits[0]] if eval_splits else None,
        processing_class=tokenizer,
        data_collator=padding_collator(tokenizer, data_args.pad_to_max_length, training_args),
        compute_metrics=glue.compute_metrics_for(task),
    )

    if training_args.do_train:
        train_and_save(trainer, last_checkpoint, train_samples=len(datasets["train"]))

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        # MNLI evaluates on matched and mismatched dev sets; the latter's metrics end in "_mm", as in run_glue.py.
        combined = {}
        for split in eval_splits:
            metrics = trainer.evaluate(eval_dataset=datasets[split])
            metrics["eval_samples"] = len(datasets[split])
            suffix = glue.eval_metric_suffix(split)
            combined.update({key + suffix: value for key, value in metrics.items()})
        report_metrics(trainer, "eval", combined)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        for split in test_splits:
            output = trainer.predict(datasets[split], metric_key_prefix="predict")
            if trainer.is_world_process_zero():
                path = os.path.join(training_args.output_dir, glue.predictions_file_name(task, split))
                glue.write_predictions(path, task, glue.predicted_labels(task, output.predictions))
                logger.info(f"Predictions written to {path}")

    if training_args.do_train:
        card = dict(tasks="text-classification")
        if task.name is not None:
            card |= dict(dataset_tags=glue.HUB_DATASET, dataset_args=task.name, dataset=f"GLUE {task.name.upper()}")
        write_model_card(trainer, **card)


if __name__ == "__main__":
    run_main(main)
