"""`SPGTrainer`: `transformers.Trainer` that fine-tunes with Sequential Policy Gradient.

How it fits into Trainer (README "Inside Trainer" gives the reasons):
- The TRP chain is registered as a submodule of the model (`model.spg_chain`) when training starts, so the optimizer,
  device placement, zero_grad, clipping and DDP include it; hyperparameter-search trials can change its settings.
- It runs inside the model's forward: a hook on the module that feeds the head captures the hidden state (inside
  accelerate's autocast), runs the chain and the shared head, and a hook on the model returns the extra logits with
  the outputs, so DDP sees the chain's parameters used. Hooks act only in SPG training steps.
- Temporary weights are kept out of every `save_pretrained` folder; checkpoints carry them in
  `spg_modules.safetensors` so `resume_from_checkpoint` restores them and their optimizer state.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from spg_hf.checkpoints import checkpoint_defect, last_complete_checkpoint
from spg_hf.cold_start import ColdStartScheduler
from spg_hf.heads import SharedHead, shared_head_for
from spg_hf.spg import TRPChain, per_example_terms, spg_loss
from spg_hf.spg_config import SPGTrainingArguments, validate_spg_settings

logger = logging.get_logger(__name__)

CHAIN_ATTRIBUTE = "spg_chain"
SPG_WEIGHTS_NAME = "spg_modules.safetensors"


def spg_objective(model: PreTrainedModel, head: SharedHead) -> str:
    """'classification', 'regression' or 'question_answering' for this model, as its own loss would decide."""
    if head.task == "question_answering":
        return "question_answering"
    problem_type = model.config.problem_type
    if problem_type == "regression" or (problem_type is None and model.config.num_labels == 1):
        return "regression"
    if problem_type in (None, "single_label_classification"):
        return "classification"
    raise ValueError(f"SPG supports single-label classification and regression, not problem_type={problem_type!r}.")


def check_spg_support(model: PreTrainedModel, args: SPGTrainingArguments) -> SharedHead:
    """The model's shared head, or a ValueError naming what is unsupported."""
    head = shared_head_for(model)
    spg_objective(model, head)
    if args.spg_attach == "pooled" and (
        head.pooled_classifier is None or getattr(model, head.pooled_classifier, None) is None
    ):
        raise ValueError(
            f"spg_attach='pooled' needs a model with a pooler before its classifier; {type(model).__name__} has "
            "none. Use spg_attach='tokens'."
        )
    return head


class SPGChainRun:
    """The chain attached to one model for one `train()` call: hooks, targets, and the statistics to log."""

    def __init__(self, model: PreTrainedModel, args: SPGTrainingArguments) -> None:
        self.model = model
        self.args = args
        self.head = check_spg_support(model, args)
        self.objective = spg_objective(model, self.head)
        self.pooled = args.spg_attach == "pooled"
        if self.pooled:
            hook_module = getattr(model, self.head.pooled_classifier)
            width = hook_module.in_features
        else:
            hook_module = getattr(model, self.head.head_input_module) if self.head.head_input_module else None
            width = model.config.hidden_size
        reference = next(model.parameters())
        self.chain = TRPChain(width, args.spg_dropout_rates, args.spg_activation).to(reference.device)
        model.add_module(CHAIN_ATTRIBUTE, self.chain)

        self.saved_ignore_keys = model._keys_to_ignore_on_save
        self.chain_keys = {f"{CHAIN_ATTRIBUTE}.{name}" for name in self.chain.state_dict()}
        model._keys_to_ignore_on_save = set(self.saved_ignore_keys or ()) | self.chain_keys

        self.armed = False
        self.inputs: dict[str, Any] = {}
        self.chain_logits: list[Any] | None = None
        if hook_module is None:
            capture = model.base_model.register_forward_hook(self._on_base_output)
        else:
            capture = hook_module.register_forward_pre_hook(self._on_head_input)
        self.handles = [capture, model.register_forward_hook(self._on_model_output)]
        self.reset_statistics()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        delattr(self.model, CHAIN_ATTRIBUTE)
        self.model._keys_to_ignore_on_save = self.saved_ignore_keys

    # ---- running the chain inside the model's forward ----

    def _on_base_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._run_chain(output[0])

    def _on_head_input(self, module: nn.Module, args: tuple) -> None:
        self._run_chain(args[0])

    def _run_chain(self, hidden: torch.Tensor) -> None:
        if not self.armed:
            return
        # Disarm first: in the pooled form the shared head is the hooked classifier itself.
        self.armed = False
        if self.pooled:
            shared_head = getattr(self.model, self.head.pooled_classifier)
            self.chain_logits = [shared_head(state) for state in self.chain(hidden)]
        else:
            self.chain_logits = [self.head.head(self.model, state, self.inputs) for state in self.chain(hidden)]

    def _on_model_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self.chain_logits is None:
            return None
        chain_logits, self.chain_logits = self.chain_logits, None
        return output, chain_logits

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[Any, list[Any]]:
        """Call the (possibly wrapped) model with the chain armed; returns the outputs and the chain's logits."""
        self.inputs, self.armed = inputs, True
        try:
            result = model(**inputs)
        finally:
            self.inputs, self.armed = {}, False
        if not isinstance(result, tuple) or len(result) != 2:
            raise RuntimeError(
                f"The SPG chain did not run in the forward of {type(self.model).__name__}: its shared-head entry "
                "captures the wrong module."
            )
        return result

    # ---- loss pieces ----

    def targets(self, inputs: dict[str, Any]) -> Any:
        if self.objective == "question_answering":
            return inputs["start_positions"], inputs["end_positions"]
        return inputs["labels"]

    def base_logits(self, outputs: Any) -> Any:
        if self.objective == "question_answering":
            return outputs["start_logits"], outputs["end_logits"]
        return outputs["logits"]

    # ---- statistics for logging ----

    def reset_statistics(self) -> None:
        self.survival_sum: torch.Tensor | float = 0.0
        self.module_loss_sum: torch.Tensor | float = 0.0
        self.recorded_batches = 0

    def record(self, survival: torch.Tensor, module_losses: torch.Tensor) -> None:
        self.survival_sum = self.survival_sum + survival
        self.module_loss_sum = self.module_loss_sum + module_losses
        self.recorded_batches += 1


class SPGTrainer(Trainer):
    """Drop-in `Trainer` that trains with SPG when `args.spg_enabled` (an `SPGTrainingArguments`).

    With `spg_enabled=False` it is `Trainer`. In both modes the loss of a micro-batch is its mean, and Trainer
    divides it by the accumulation steps, so gradient accumulation gives the update of the larger batch
    (stock Trainer doubles it for models whose forward takes **kwargs, upstream issue #47688).
    """

    loss_is_scaled_for_ga = False
    USER_OPTIMIZER_ERROR = (
        "optimizers: SPG adds temporary parameters when training starts, so it needs the optimizer Trainer builds. "
        "Pass optimizer_cls_and_kwargs instead of optimizers=(optimizer, scheduler), or set spg_enabled=False."
    )

    def __init__(
        self, model: PreTrainedModel | nn.Module | None = None, args: SPGTrainingArguments | None = None, **kwargs: Any
    ) -> None:
        if args is not None and not isinstance(args, SPGTrainingArguments):
            raise TypeError(f"SPGTrainer needs args of type SPGTrainingArguments, got {type(args).__name__}.")
        super().__init__(model=model, args=args, **kwargs)
        self._user_optimizer = kwargs.get("optimizers", (None, None))[0] is not None
        self._spg_run: SPGChainRun | None = None
        self._update_steps_per_epoch: int | None = None
        if self.args.spg_enabled:
            check_spg_support(self.model, self.args)
            if self._user_optimizer:
                raise ValueError(self.USER_OPTIMIZER_ERROR)

    # ---- attaching and detaching the chain ----

    def _hp_search_setup(self, trial: Any) -> None:
        # The last step of train() before resuming and building the optimizer: model_init has built the trial's
        # model and the trial's values are in self.args, so the chain is built from them here.
        super()._hp_search_setup(trial)
        if self.args.spg_enabled:
            validate_spg_settings(self.args)
            if self._user_optimizer:
                raise ValueError(self.USER_OPTIMIZER_ERROR)
            self._spg_run = SPGChainRun(self.model, self.args)
            # A second train() call would reuse the optimizer and DDP wrapper built around the previous, detached
            # chain; user optimizers are refused above, so both are Trainer's own and can be built afresh.
            self.optimizer = None
            self.model_wrapped = self.model
            logger.info(
                f"SPG: {len(self.args.spg_weights)} temporary modules ({self.args.spg_attach}, "
                f"{sum(p.numel() for p in self._spg_run.chain.parameters()):,} parameters), "
                f"objective {self._spg_run.objective}."
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        resume_from_checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._spg_run is not None:
                self._spg_run.detach()
                self._spg_run = None

    # ---- the loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        run = self._spg_run
        if run is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=None)

        targets = run.targets(inputs)
        labels = None
        if (self.label_smoother is not None or self.compute_loss_func is not None) and "labels" in inputs:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
        outputs, chain_logits = run.forward(model, inputs)
        if labels is None:
            base_loss = outputs["loss"]
        elif self.compute_loss_func is not None:
            base_loss = self.compute_loss_func(outputs, labels, num_items_in_batch=None)
        else:
            base_loss = self.label_smoother(outputs, labels)

        tolerance = self.args.spg_regression_tolerance
        _, base_correct = per_example_terms(run.objective, run.base_logits(outputs), targets, tolerance)
        module_terms = [per_example_terms(run.objective, logits, targets, tolerance) for logits in chain_logits]
        result = spg_loss(
            base_loss,
            base_correct,
            module_terms,
            self.args.spg_weights,
            self.args.spg_normalize,
            self.args.spg_loss_normalization,
        )
        run.record(result.survival, result.module_losses)
        return (result.loss, outputs) if return_outputs else result.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        run = self._spg_run
        if run is not None and run.recorded_batches and "loss" in logs:
            # Every process logs training steps together, so this reduction is collective-safe.
            statistics = torch.stack([run.survival_sum, run.module_loss_sum]) / run.recorded_batches
            statistics = self.accelerator.reduce(statistics.to(self.args.device), reduction="mean").tolist()
            for t, (survival, module_loss) in enumerate(zip(*statistics, strict=True), start=1):
                logs[f"spg/survival_{t}"] = round(survival, 4)
                logs[f"spg/loss_{t}"] = round(module_loss, 4)
            run.reset_statistics()
        super().log(logs, start_time)

    # ---- checkpoints carry the temporary weights; saved models do not ----

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._start_checkpoint(folder)
        super()._save_checkpoint(model, trial)

    def _start_checkpoint(self, folder: str) -> None:
        # Trainer writes trainer_state.json last and deletes older checkpoints after it, so that file marks a complete
        # checkpoint (spg_hf.checkpoints): the SPG weights go in before Trainer starts, and the mark and SPG weights
        # that an interrupted earlier save of this step left behind go first, so that old and new files never pass
        # for one complete checkpoint.
        os.makedirs(folder, exist_ok=True)
        for name in (TRAINER_STATE_NAME, SPG_WEIGHTS_NAME):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
        if self._spg_run is not None:
            safetensors.torch.save_file(
                {name: tensor.contiguous() for name, tensor in self._spg_run.chain.state_dict().items()},
                os.path.join(folder, SPG_WEIGHTS_NAME),
            )

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """Trainer's `resume_from_checkpoint`, where True picks the newest *complete* checkpoint of output_dir (stock
        Trainer takes the newest folder, even one whose save was cut off) and a given folder must be complete."""
        if resume_from_checkpoint is True:
            checkpoint, skipped = last_complete_checkpoint(self.args.output_dir)
            if checkpoint is None:
                found = "; ".join(skipped) or "no checkpoint folders"
                raise ValueError(
                    f"resume_from_checkpoint=True: output_dir {self.args.output_dir} has no complete checkpoint "
                    f"({found})."
                )
            if skipped:
                logger.warning(f"Resuming from {checkpoint}, the newest complete checkpoint.")
            return checkpoint
        if isinstance(resume_from_checkpoint, str):
            defect = checkpoint_defect(resume_from_checkpoint)
            if defect is not None:
                raise ValueError(
                    f"resume_from_checkpoint={resume_from_checkpoint!r} cannot be resumed from: {defect}. Pass an "
                    "older checkpoint, or resume_from_checkpoint=True for the newest complete one in output_dir."
                )
        return resume_from_checkpoint or None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, SPG_WEIGHTS_NAME)
        saved_by_spg = os.path.isfile(path)
        # The optimizer state covers the SPG modules exactly when the checkpoint has their weights, so a checkpoint
        # only continues in the mode it was saved in; switching modes starts a new run from its weights.
        if self._spg_run is not None and not saved_by_spg:
            raise ValueError(
                f"{resume_from_checkpoint} was saved with spg_enabled=False: it has no {SPG_WEIGHTS_NAME}, which an "
                "SPG run writes before its checkpoint is complete, so its optimizer state has nothing for the SPG "
                "modules. Continue it with spg_enabled=False, or train with SPG from its weights in a new "
                f"output_dir (model_name_or_path={resume_from_checkpoint})."
            )
        if self._spg_run is None and saved_by_spg:
            raise ValueError(
                f"{resume_from_checkpoint} was saved by an SPG run (it has {SPG_WEIGHTS_NAME}), so its optimizer "
                "state includes the SPG modules: continue it with spg_enabled=True and its spg_weights and "
                "spg_dropout, or train without SPG from its weights (which leave out the SPG modules) in a new "
                f"output_dir (model_name_or_path={resume_from_checkpoint})."
            )
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self._spg_run is not None:
            self._spg_run.chain.load_state_dict(safetensors.torch.load_file(path, device="cpu"))

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        if self._spg_run is not None:
            load_result.missing_keys[:] = [k for k in load_result.missing_keys if k not in self._spg_run.chain_keys]
        super()._issue_warnings_after_load(load_result)

    # ---- optimizer cold start ----

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]
        return values

    def cold_start_steps(self) -> int:
        if self.args.cold_start_steps > 0:
            return self.args.cold_start_steps
        if self.args.cold_start_epochs > 0:
            return math.ceil(self.args.cold_start_epochs * self._update_steps_per_epoch)
        return 0

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        cold_steps = self.cold_start_steps()
        if cold_steps == 0 or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        if cold_steps >= num_training_steps:
            raise ValueError(
                f"The optimizer cold start ({cold_steps} steps from cold_start_steps/cold_start_epochs) must be "
                f"shorter than training ({num_training_steps} steps)."
            )
        schedule = super().create_scheduler(num_training_steps - cold_steps, optimizer)
        self.lr_scheduler = ColdStartScheduler(optimizer or self.optimizer, schedule, cold_steps)
        return self.lr_scheduler
