"""Every place spg-hf leans on a private `Trainer` internal or works around an upstream defect, each with why and
when it can go (as TRL keeps its shims in one `_compat.py`). Written against transformers 5.20-5.25.

Private Trainer methods `SPGTrainerMixin` overrides (`TrainerInternals`):
- `_hp_search_setup`: the last step of `train()` before resuming and building the optimizer, after `model_init` and
  a trial's values: where the chains attach. Can go when Trainer offers a public hook at that point.
- `_save_checkpoint`: the chains' weights must be in the folder before `trainer_state.json` marks it complete (a
  callback's `on_save` runs after the mark). Can go with a public hook before a checkpoint is written.
- `_save`: Trainer saves a model that is not a `PreTrainedModel` as its whole state dict, chains included. Can go
  when Trainer honours `_keys_to_ignore_on_save` for every module.
- `_load_from_checkpoint`: the chains' weights come back with the model's. Can go with a public resume hook.
- `_issue_warnings_after_load`: a checkpoint's model file lacks the chains' keys by design. Can go with the above.
- `set_initial_training_values`: the update steps per epoch, which the cold start needs. Can go when Trainer
  keeps it as state.
Private Trainer internals read: `_remove_unused_columns` / `_get_collator_with_removed_columns` (the first example
as Trainer feeds it), `_get_output_dir` (a checkpoint's folder), `_loss_shifts_labels` (whether the loss shifts
labels: the item count). Upstream defect: `loss_divides_by_item_count` (transformers#47688).
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch import nn
from transformers.loss.loss_utils import (
    ForCausalLMLoss,
    ForMaskedLMLoss,
    ForQuestionAnsweringLoss,
    ForSemanticSegmentationLoss,
    ForSequenceClassificationLoss,
    ForTokenClassification,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import is_datasets_available

from spg_hf.trainer.support import preserved_random_state


class TrainerInternals:
    """The private Trainer methods SPG hooks into (see the module docstring for why and when each can go); each
    hands on to an `SPGTrainerMixin` method."""

    def _hp_search_setup(self, trial: Any) -> None:
        super()._hp_search_setup(trial)
        self._spg_attach()

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self._spg_start_checkpoint(folder)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, self._spg_state_dict_to_save(state_dict))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._spg_load_checkpoint(resume_from_checkpoint)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        self._spg_drop_chain_keys(load_result.missing_keys)
        super()._issue_warnings_after_load(load_result)

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]
        return values


def first_training_example(trainer: Any) -> dict[str, Any]:
    """The first training example as Trainer would feed it (unused columns removed, collated, on the model's
    device), leaving every random state as it was: collators may draw (MLM masking)."""
    dataset, collator = trainer.train_dataset, trainer.data_collator
    if _is_datasets_dataset(dataset):
        dataset = trainer._remove_unused_columns(dataset, description="training")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="training")
    indexable = hasattr(dataset, "__getitem__") and not isinstance(dataset, torch.utils.data.IterableDataset)
    example = dataset[0] if indexable else next(iter(dataset))
    with preserved_random_state():
        batch = collator([example])
    return send_to_device(batch, next(trainer.model.parameters()).device)


def _is_datasets_dataset(dataset: Any) -> bool:
    """Whether Trainer removes unused columns from the dataset itself (a `datasets.Dataset`) rather than in its
    collator; without the `datasets` package installed, nothing is one."""
    if not is_datasets_available():
        return False
    import datasets

    return isinstance(dataset, datasets.Dataset)


def zero3_partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned the model's weights (each then carries its `ds_id`); a model built
    normally stays whole until Trainer hands it to DeepSpeed's engine. Can go if DeepSpeed exposes this."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


def loss_shifts_labels(trainer: Any) -> bool:
    """Whether Trainer counts a batch's items after shifting its labels (causal LMs)."""
    return bool(trainer._loss_shifts_labels)


# transformers losses that sum over the labelled items and divide by `num_items_in_batch` when they are given it.
ITEM_COUNT_LOSSES = (
    ForCausalLMLoss,
    ForMaskedLMLoss,
    ForTokenClassification,
    ForQuestionAnsweringLoss,
    ForSemanticSegmentationLoss,
)


def forward_passes_item_count_to_loss_function(model_class: type) -> bool:
    """Whether the class's forward calls `self.loss_function` with its `**kwargs` (where Trainer puts the count) or
    with `num_items_in_batch=`, read from its source; False when the source cannot be read."""
    forward = inspect.unwrap(model_class.forward)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(forward)))
    except (OSError, TypeError, SyntaxError):
        return False
    definition = next(node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    kwargs_name = definition.args.kwarg.arg if definition.args.kwarg else None
    for node in ast.walk(definition):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "loss_function":
            for keyword in node.keywords:
                if keyword.arg == "num_items_in_batch":
                    return True
                if keyword.arg is None and isinstance(keyword.value, ast.Name) and keyword.value.id == kwargs_name:
                    return True
    return False


def loss_divides_by_item_count(model: nn.Module) -> bool:
    """Whether the model's forward divides its loss by the `num_items_in_batch` Trainer passes it, rather than only
    accepting the argument in `**kwargs` (upstream issue #47688).

    A model with an `accepts_loss_kwargs` attribute is taken at its word, as Trainer takes it. Otherwise its forward
    must hand the count to `self.loss_function` (`forward_passes_item_count_to_loss_function`): a forward that
    builds its own loss module, as BertForSequenceClassification and BertForMaskedLM do, or calls `loss_function`
    without its `**kwargs`, as the decoder sequence classifiers (LlamaForSequenceClassification, ...) do, drops it.
    And the loss function must divide by the count: the causal LM, masked LM, token classification, QA and
    segmentation losses do; the sequence classification loss does for single-label classification only (its
    regression and multi-label branches take a plain mean; `problem_type=None` with several labels counts as
    single-label, as the loss decides for integer labels). Whatever this cannot see counts as not dividing: Trainer
    then trains it as it trains a model whose forward takes no `**kwargs`, which can average micro-batches unevenly
    but never inflates them.
    """
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    if not forward_passes_item_count_to_loss_function(type(model)):
        return False
    loss_function = model.loss_function
    if loss_function is ForSequenceClassificationLoss:
        problem_type = model.config.problem_type
        return problem_type == "single_label_classification" or (problem_type is None and model.config.num_labels > 1)
    return loss_function in ITEM_COUNT_LOSSES
