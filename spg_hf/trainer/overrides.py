"""`SPGTrainerMixin`: the `Trainer` overrides that make any `Trainer` (or subclass) train with SPG, delegating to
the chain run (`spg_hf.trainer.chain_run`), the support checks (`spg_hf.trainer.support`) and the checkpoint
functions (`spg_hf.trainer.checkpoints`); the private Trainer methods it hooks are in `spg_hf.trainer._compat`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, TrainingArguments
from transformers.trainer_utils import unwrap_peft_model
from transformers.utils import logging

from spg_hf.cold_start import ColdStartCallback
from spg_hf.heads import HeadFamily
from spg_hf.heads.resolve import scalar_loss
from spg_hf.model_card import MODEL_CARD_TAG, add_spg_sections
from spg_hf.spg import spg_loss
from spg_hf.spg_config import SPGArguments, SPGTrainingArguments, validate_spg_settings
from spg_hf.trainer._compat import (
    TrainerInternals,
    first_training_example,
    loss_divides_by_item_count,
    loss_shifts_labels,
    zero3_partitioned,
)
from spg_hf.trainer.chain_run import SPGChainRun, chain_seed
from spg_hf.trainer.checkpoints import (
    chain_state_for_checkpoint,
    checkpoint_to_resume,
    load_chain_state,
    start_checkpoint,
)
from spg_hf.trainer.support import check_spg_support

logger = logging.get_logger(__name__)

# Below this share of positions reaching module 1, `survivors` normalisation gives each survivor several times the
# weight the model's own loss gives a position, which collapsed weak LMs in our runs (README "Troubleshooting").
LOW_TOKEN_SURVIVAL = 0.1
# A classifier whose module-1 survivors are (almost) all of one label predicts one class, and the module terms then
# add weight to that class alone. Runs that left this state had left it well before the last quarter of training,
# so a run still in it then is warned (the measurements: README "Troubleshooting", docs/results.md).
ONE_LABEL_SURVIVORS = 0.98
ONE_LABEL_FROM_PROGRESS = 0.75


# Trainer(args=None) trains into this folder.
DEFAULT_OUTPUT_DIR = "tmp_trainer"


def as_spg_arguments(args: TrainingArguments | None, arguments_class: type[SPGArguments]) -> SPGArguments:
    """`args` with the SPG settings: unchanged if they have them, converted to `arguments_class` from arguments
    without them (every field kept, SPG defaults added), or that class's defaults when there are none."""
    if args is None:
        logger.info(f"No `{arguments_class.__name__}` passed, using `output_dir={DEFAULT_OUTPUT_DIR}`.")
        return arguments_class(output_dir=DEFAULT_OUTPUT_DIR)
    if isinstance(args, SPGArguments):
        return args
    if isinstance(args, TrainingArguments):
        return arguments_class.from_training_arguments(args)
    raise TypeError(f"args must be a TrainingArguments or {arguments_class.__name__}, got {type(args).__name__}.")


class SPGTrainerMixin(TrainerInternals):
    """SPG for `Trainer` and any subclass of it: `class MyTrainer(SPGTrainerMixin, SomeTrainer)` with
    `spg_arguments_class` set to that trainer's arguments class with the SPG settings
    (`@dataclass class MyArguments(SPGArguments, SomeTrainingArguments)`). The mixin overrides `compute_loss` around
    the parent's own, so what the parent computes and logs (label smoothing, TRL's token accuracy, ...) stays.

    It takes every argument the parent takes. `args` may carry the SPG settings, lack them (converted, SPG defaults
    added) or be None (the defaults). With `spg_enabled=False` it is the parent trainer, except for models whose
    forward takes `num_items_in_batch` in `**kwargs` without dividing by it (`loss_divides_by_item_count`): Trainer
    would count their loss as scaled for gradient accumulation and inflate the update by the accumulation steps
    (upstream issue #47688), so they are trained as Trainer trains models without `**kwargs`: each micro-batch's
    mean, divided by the accumulation steps. Models that divide by the count keep Trainer's normalisation over the
    whole accumulated batch.

    A `PeftModel` trains with its adapter: the family is read from the adapted task model, the chain trains beside
    the adapter, and the saved folder is PEFT's adapter folder.
    """

    spg_arguments_class: type[SPGArguments] = SPGTrainingArguments

    USER_OPTIMIZER_ERROR = (
        "optimizers: SPG adds temporary parameters when training starts, so it needs the optimizer Trainer builds. "
        "Pass optimizer_cls_and_kwargs instead of optimizers=(optimizer, scheduler), or set spg_enabled=False."
    )

    def __init__(
        self, model: PreTrainedModel | nn.Module | None = None, args: TrainingArguments | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model=model, args=as_spg_arguments(args, self.spg_arguments_class), **kwargs)
        self._user_optimizer = kwargs.get("optimizers", (None, None))[0] is not None
        self._spg_run: SPGChainRun | None = None
        self._warned_low_survival = False
        self._warned_one_label = False
        self._update_steps_per_epoch: int | None = None
        self._chain_calls = (-1, 0)  # (optimizer step, compute_loss calls at that step): the chain's random stream
        # Trainer counts items, passes the count to the model and skips the division by the accumulation steps for
        # every model whose forward takes **kwargs; only a model that divides by the count may keep that.
        if self.model_accepts_loss_kwargs and not loss_divides_by_item_count(
            unwrap_peft_model(self.accelerator.unwrap_model(self.model))
        ):
            self.model_accepts_loss_kwargs = False
        self._resolved_head: tuple[tuple, HeadFamily] | None = None
        self._spg_settings_applied: dict[str, Any] = {}
        if self.args.spg_enabled:
            if self._user_optimizer:
                raise ValueError(self.USER_OPTIMIZER_ERROR)
            if self.model is not None:
                family = self._head_family()
                if family is not None:
                    self._check_spg_loss_settings(family.objective)

    def _head_family(self) -> HeadFamily | None:
        """The model's head family (`check_spg_support`), checked on the first training example against the model's
        logits and the loss this trainer computes, once per model and head setting. Without a training set it is
        checked when training starts, and not at all on weights DeepSpeed ZeRO-3 has already partitioned (a model
        loaded under its config), which cannot run outside DeepSpeed's engine. None: a head named with spg_head, which
        is read from that example, while there is none."""
        args = self.args
        key = (
            self.model,
            args.spg_head,
            args.spg_auxiliary_head,
            args.spg_auxiliary_weight,
            args.spg_attach,
            args.spg_module,
            args.spg_block,
            args.spg_blocks_per_module,
        )
        if self._resolved_head is not None and self._resolved_head[0] == key:
            return self._resolved_head[1]
        example = self.train_dataset is not None and not zero3_partitioned(self.model)
        family = check_spg_support(
            self.model,
            self.args,
            first_training_example(self) if example else None,
            self._spg_family_form,
            self._loss_and_outputs,
            self._label_smoothing(),
        )
        if example:
            self._resolved_head = (key, family)
        return family

    def _loss_and_outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, Any]:
        """The loss and outputs the parent trainer computes for `batch` (the model's loss, compute_loss_func's or the
        label smoother's), for the construction check; loss None where it computes none."""
        if self.compute_loss_func is not None and "labels" not in batch:
            return None, self.model(**batch)  # a loss function that would be handed no labels
        try:
            loss, outputs = super().compute_loss(self.model, dict(batch), return_outputs=True)
        except ValueError as error:
            if "did not return a loss" not in str(error):  # Trainer's words for a batch without labels
                raise
            return None, self.model(**batch)
        return scalar_loss(loss), outputs

    def _label_smoothing(self) -> float:
        """Trainer's label smoothing, which applies where no compute_loss_func replaces the model's loss."""
        return self.label_smoother.epsilon if self.label_smoother and self.compute_loss_func is None else 0.0

    def _spg_family_form(self, family: HeadFamily) -> HeadFamily:
        """The form of the model's head family this trainer's forward reaches; a trainer whose forward reaches the
        head another way (TRL's fused LM head) overrides it."""
        return family

    def _check_spg_loss_settings(self, objective: str) -> None:
        """ValueErrors for loss settings SPG cannot honour. Where Trainer counts items it takes the loss as scaled
        for accumulation (see compute_loss)."""
        if self.args.spg_loss_normalization and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None):
            source = "compute_loss_func" if self.compute_loss_func is not None else type(self.model).__name__
            raise ValueError(
                "spg_loss_normalization multiplies a per-batch mean loss by exp(CE_0 - L), but the loss of "
                f"{source} is divided by the item count of the whole accumulated batch (num_items_in_batch). "
                "Set spg_loss_normalization=False."
            )
        if self.compute_loss_func is not None and objective == "question_answering":
            raise ValueError(
                "compute_loss_func: SPG computes the question-answering loss from start and end positions, with no "
                "labels to pass to it (and Trainer would take its loss as scaled for accumulation). Leave it unset "
                "or set spg_enabled=False."
            )

    # ---- attaching and detaching the chain ----

    def _spg_attach(self) -> None:
        """Attaches the chains when training starts (`TrainerInternals._hp_search_setup`): model_init has built the
        trial's model and the trial's values are in self.args, so the chains are built from them."""
        if self.args.spg_enabled:
            validate_spg_settings(self.args)
            if self._user_optimizer:
                raise ValueError(self.USER_OPTIMIZER_ERROR)
            family = self._head_family()
            if family is None:
                raise ValueError(
                    f"spg_head={self.args.spg_head!r}: SPG reads what the named head predicts from one training "
                    "example before training, which DeepSpeed's partitioned weights cannot run."
                )
            if self.args.spg_module == "block" and family.block is None:
                raise ValueError(
                    "spg_module='block': SPG finds the last block and checks its copies on one training example "
                    "before training, which DeepSpeed's partitioned weights cannot run. Use spg_module='linear'."
                )
            self._spg_run = SPGChainRun(self.model, self.args, family, self._label_smoothing())
            self._spg_settings_applied = {"spg_normalize": self._spg_run.normalize}
            self._check_spg_loss_settings(self._spg_run.objective.name)
            # A second train() call would reuse the optimizer and DDP wrapper built around the previous, detached
            # chain; user optimizers are refused above, so both are Trainer's own and can be built afresh.
            self.optimizer = None
            self.model_wrapped = self.model
            logger.info(
                f"SPG: {len(self.args.spg_weights)} temporary modules (head family {self._spg_run.family.name}, "
                + self._spg_run.describe_chain()
                + ", "
                + (
                    f"an auxiliary chain on {self._spg_run.auxiliary.family.rule} weighted "
                    f"{self._spg_run.auxiliary.weight}, "
                    if self._spg_run.auxiliary is not None
                    else ""
                )
                + f"{sum(p.numel() for h in self._spg_run.heads for p in h.chain.parameters()):,} parameters), "
                f"objective {self._spg_run.objective.name}, spg_normalize={self._spg_run.normalize!r}"
                + (" (the default for this task)" if self.args.spg_normalize is None else "")
                + "."
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        resume_from_checkpoint = checkpoint_to_resume(
            resume_from_checkpoint, self.args.output_dir, self.args.spg_enabled
        )
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
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        # Trainer counts the items of the accumulated batch only for a loss that divides by the count (the model's,
        # see loss_divides_by_item_count, or compute_loss_func's) and then takes the loss as scaled for accumulation.
        # The base term comes back divided by the count, and each SPG term, a mean over this micro-batch, is weighted
        # by the micro-batch's share of the items, so the accumulated loss is that of one large batch (exactly for
        # spg_normalize="batch"); both are multiplied by the processes that share the count. Without a count every
        # term is a micro-batch mean, which Trainer divides by the accumulation steps.
        weights = self.args.spg_weights
        if num_items_in_batch is not None:
            item_share = self._micro_batch_items(inputs) / num_items_in_batch
            if self.args.average_tokens_across_devices:
                item_share = item_share * self._processes_sharing_item_count()
            weights = [weight * item_share for weight in weights]
        # The base term is exactly Trainer's loss (label smoothing with its shift, compute_loss_func, ...).
        # Token-level terms come whole with the chain's result; asking for the outputs only when they are needed
        # spares trainers that recompute them for return_outputs (TRL's fused LM head) a forward.
        wants_outputs = return_outputs or not run.family.token_level
        with run.armed_call(model, inputs, self._next_chain_seed()) as chain_results:
            base_loss = super().compute_loss(
                model, inputs, return_outputs=wants_outputs, num_items_in_batch=num_items_in_batch
            )
            base_loss, outputs = base_loss if wants_outputs else (base_loss, None)
        chains = run.terms(outputs, chain_results)
        result = spg_loss(base_loss, chains, weights, run.normalize, self.args.spg_loss_normalization)
        run.record(result, chains)
        return (result.loss, outputs) if return_outputs else result.loss

    def _next_chain_seed(self) -> int:
        """The seed of this forward's chain stream (`chain_seed`): the micro-batches of one optimizer step count
        up from 0."""
        step, calls = self._chain_calls
        calls = calls + 1 if step == self.state.global_step else 0
        self._chain_calls = (self.state.global_step, calls)
        return chain_seed(self.args.seed, self.state.global_step, calls, self.args.process_index)

    def _micro_batch_items(self, inputs: dict[str, Any]) -> torch.Tensor:
        """This micro-batch's part of Trainer's item count: its labels that are not -100, taken after the shift
        for losses that shift them (causal LMs)."""
        if "shift_labels" in inputs:
            labels = inputs["shift_labels"]
        elif loss_shifts_labels(self):
            labels = inputs["labels"][..., 1:]
        else:
            labels = inputs["labels"]
        return labels.ne(-100).sum()

    def _processes_sharing_item_count(self) -> int:
        """With average_tokens_across_devices the item count is summed over the processes while data parallelism
        averages their gradients, so a loss divided by it is multiplied back by the number of data-parallel
        replicas (processes over tensor-parallel groups, or the GPUs of DataParallel), as Trainer does."""
        if self.args.n_gpu > 1:
            return self.args.n_gpu
        return self.accelerator.num_processes // self.get_tp_size()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        run = self._spg_run
        if run is not None and run.recorded_batches and "loss" in logs:
            # Every process logs training steps together, so this reduction is collective-safe.
            for head in run.heads:
                statistics = torch.stack([head.survival_sum, head.module_loss_sum]) / run.recorded_batches
                statistics = self.accelerator.reduce(statistics.to(self.args.device), reduction="mean").tolist()
                for t, (survival, module_loss) in enumerate(zip(*statistics, strict=True), start=1):
                    logs[f"spg/{head.log_prefix}survival_{t}"] = round(survival, 4)
                    logs[f"spg/{head.log_prefix}loss_{t}"] = round(module_loss, 4)
            if run.counts_survivor_labels:
                counts = self.accelerator.reduce(run.survivor_label_counts.to(self.args.device), reduction="sum")
                if counts.sum() > 0:
                    top_share = (counts.max() / counts.sum()).item()
                    logs["spg/survivors_in_top_label"] = round(top_share, 4)
                    self._warn_if_survivors_share_one_label(top_share, counts.argmax().item())
            run.reset_statistics()
            self._warn_if_few_tokens_survive(logs["spg/survival_1"])
        super().log(logs, start_time)

    def _warn_if_survivors_share_one_label(self, top_share: float, label: int) -> None:
        if (
            top_share >= ONE_LABEL_SURVIVORS
            and self.state.global_step >= ONE_LABEL_FROM_PROGRESS * self.state.max_steps
            and not self._warned_one_label
        ):
            self._warned_one_label = True
            config = getattr(self.model, "config", None)
            # A config may hold no label names (id2label None: PvtConfig's defaults).
            name = (getattr(config, "id2label", None) or {}).get(label, label)
            logger.warning(
                f"SPG: at step {self.state.global_step} of {self.state.max_steps}, {top_share:.1%} of the examples "
                f"reaching module 1 have the label {name!r}: the model predicts one class, and the module terms add "
                "weight to that class alone, which holds it there. A larger learning rate or more epochs may let it "
                "learn (README, 'Troubleshooting')."
            )

    def _warn_if_few_tokens_survive(self, survival: float) -> None:
        if (
            self._spg_run.family.token_level
            and self._spg_run.normalize == "survivors"
            and survival < LOW_TOKEN_SURVIVAL
            and not self._warned_low_survival
        ):
            self._warned_low_survival = True
            logger.warning(
                f"SPG: only {survival:.1%} of the labelled positions reach module 1 (the model predicts few tokens "
                "right). With spg_normalize='survivors' the module terms put their whole weight on those few "
                "positions, which can make the model collapse onto frequent tokens (README, 'Troubleshooting'); "
                "spg_normalize='batch' scales the terms by the survival instead."
            )

    # ---- checkpoints carry the chains; saved models do not (TrainerInternals hands on to these) ----

    def _spg_start_checkpoint(self, folder: str) -> None:
        run = self._spg_run
        chain_state = None
        if run is not None:
            parameters = [parameter for head in run.heads for parameter in head.chain.parameters()]
            chain_state = chain_state_for_checkpoint(parameters, run.chain_state_dict)
        if self.args.should_save:
            start_checkpoint(folder, chain_state)

    def _spg_state_dict_to_save(self, state_dict: dict | None) -> dict | None:
        # Trainer saves a model that is not a PreTrainedModel as its whole state dict, which holds the chains while
        # they are attached: leave them out, as save_pretrained does for PreTrainedModels.
        run = self._spg_run
        if run is None or isinstance(run.model, PreTrainedModel):
            return state_dict
        state_dict = self.model.state_dict() if state_dict is None else state_dict
        return {name: tensor for name, tensor in state_dict.items() if name not in run.chain_keys}

    def _spg_load_checkpoint(self, checkpoint: str) -> None:
        if self._spg_run is not None:
            self._spg_run.load_chain_state_dict(load_chain_state(checkpoint))

    def _spg_drop_chain_keys(self, missing_keys: list[str]) -> None:
        if self._spg_run is not None:
            missing_keys[:] = [key for key in missing_keys if key not in self._spg_run.chain_keys]

    # ---- optimizer cold start: the ColdStartCallback a plain Trainer takes, configured by the arguments ----

    def cold_start(self) -> ColdStartCallback | None:
        """The cold start `cold_start_steps` / `cold_start_epochs` ask for, if any. Read when training starts, since
        a hyperparameter-search trial may set them."""
        if self.args.cold_start_steps > 0:
            return ColdStartCallback(steps=self.args.cold_start_steps)
        if self.args.cold_start_epochs > 0:
            return ColdStartCallback(epochs=self.args.cold_start_epochs)
        return None

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        cold_start = self.cold_start()
        if cold_start is not None:
            if any(isinstance(callback, ColdStartCallback) for callback in self.callback_handler.callbacks):
                raise ValueError(
                    "cold_start_steps / cold_start_epochs and a ColdStartCallback both ask for an optimizer cold "
                    "start; keep one of them."
                )
            cold_start.start(scheduler, self.args, num_training_steps, self._update_steps_per_epoch)
        return scheduler

    # ---- model card: after an SPG run it says so, where HF users look ----

    def create_model_card(self, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """Trainer's model card (README.md in output_dir, also written by `push_to_hub`). After an SPG run it carries
        the `spg` tag, names the method with a link to the paper, lists the SPG settings and gives a BibTeX citation.
        """
        if not self.args.spg_enabled:
            return super().create_model_card(tags=tags, **kwargs)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        if MODEL_CARD_TAG not in tags:
            tags.append(MODEL_CARD_TAG)
        super().create_model_card(tags=tags, **kwargs)
        if self.is_world_process_zero():
            card_path = Path(self.args.output_dir) / "README.md"
            card = add_spg_sections(card_path.read_text(encoding="utf-8"), self.args, self._spg_settings_applied)
            card_path.write_text(card, encoding="utf-8")
