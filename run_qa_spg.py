"""Fine-tune a model for extractive question answering (SQuAD v1.1 / v2.0) with SPG: HF's run_qa.py on SPGTrainer.

    python run_qa_spg.py configs/qa/squad_bert_base_spg.yaml
    python run_qa_spg.py --model_name_or_path bert-base-uncased --dataset_name rajpurkar/squad \
        --do_train --do_eval --output_dir outputs/squad

Arguments: spg_hf.tasks.cli.ModelArguments, spg_hf.tasks.qa.DataTrainingArguments and ScriptTrainingArguments
(`--help` lists them).
"""

from __future__ import annotations

import logging

from transformers import set_seed

from spg_hf import SPGTrainer
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
from spg_hf.tasks.qa import (
    DataTrainingArguments,
    evaluate_squad,
    load_model_and_tokenizer,
    load_squad_datasets,
    tokenize_dataset,
)

logger = logging.getLogger("spg_hf")


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataTrainingArguments, ScriptTrainingArguments), argv
    )
    setup_logging(training_args)
    logger.info(f"Training/evaluation parameters {training_args}")
    last_checkpoint = prepare_output_dir(training_args)
    set_seed(training_args.seed)

    # Everything that can be wrong with the data or the model is found here, before training starts.
    raw_datasets = load_squad_datasets(data_args, model_args, training_args.do_train, training_args.do_eval)
    model, tokenizer = load_model_and_tokenizer(model_args, data_args)

    with training_args.main_process_first(desc="tokenizing"):
        if training_args.do_train:
            train_dataset = tokenize_dataset(raw_datasets["train"], data_args, tokenizer, train=True)
        if training_args.do_eval:
            eval_examples = raw_datasets["validation"]
            eval_features = tokenize_dataset(eval_examples, data_args, tokenizer, train=False)

    trainer = SPGTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        data_collator=padding_collator(tokenizer, data_args.pad_to_max_length, training_args),
        processing_class=tokenizer,
    )

    metrics = {}
    if training_args.do_train:
        metrics |= train_and_save(trainer, last_checkpoint, train_samples=len(train_dataset))

    if training_args.do_eval:
        # Logits for every window, then answers per question, EM / F1 and output_dir/eval_predictions.json.
        eval_metrics = evaluate_squad(trainer, eval_examples, eval_features, data_args)
        report_metrics(trainer, "eval", eval_metrics)
        metrics |= eval_metrics
    if training_args.do_train:
        write_model_card(trainer, tasks="question-answering", dataset=data_args.dataset_name)
    return metrics


if __name__ == "__main__":
    run_main(main)
