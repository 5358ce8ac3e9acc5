"""The settings of Sequential Policy Gradient (`SPGArguments`), and the arguments classes that add them to
`TrainingArguments` (`SPGTrainingArguments`) and `Seq2SeqTrainingArguments` (`SPGSeq2SeqTrainingArguments`); TRL's
`SFTConfig` gets them in `spg_hf.trl`. Any other arguments class gets them the same way:
`@dataclass class MyArguments(SPGArguments, MyTrainingArguments): pass`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

SPG_MODULE_CHOICES = ("linear", "block")
SPG_ATTACH_CHOICES = ("tokens", "pooled")
SPG_ACTIVATION_CHOICES = ("none", "relu")
SPG_NORMALIZE_CHOICES = ("survivors", "batch")
DEFAULT_SPG_DROPOUT = 0.2


@dataclass
class SPGArguments:
    """The SPG settings, a dataclass mixin placed before a `TrainingArguments` class. The defaults do not all follow
    the paper: the chain's weights and dropout are the paper's, `spg_activation` is the authors' reference code's
    (`relu`), `spg_normalize` depends on the task, and each setting's help says whether a form is the paper text's
    or the reference code's (see the README's settings table)."""

    spg_enabled: bool = field(
        default=True,
        metadata={
            "help": "Train with SPG. False: SPGTrainer trains like Trainer (the same losses and weights, step for "
            "step), except that under gradient accumulation it does not inflate the update of models that drop "
            "num_items_in_batch, as Trainer does (upstream transformers issue #47688)."
        },
    )
    spg_weights: list[float] = field(
        default_factory=lambda: [0.4, 0.2, 0.1],
        metadata={
            "help": "Return weights lambda_t of the temporary modules; their count is the chain length T. Each >= 0; "
            "all 0 trains bit for bit as Trainer (the chain runs but adds nothing)."
        },
    )
    # Annotated as a list so `--spg_dropout 0.2 0.1 0.1` parses; a single float (the default) applies to every
    # module, and stays a float so hyperparameter search can cast trial values to it. HfArgumentParser gives list
    # fields no default unless one comes through the metadata.
    spg_dropout: list[float] = field(
        default=DEFAULT_SPG_DROPOUT,
        metadata={
            "help": "Dropout rate of each temporary module: one value for all, or one per module "
            "(--spg_dropout 0.2 0.1 0.1). Each in [0, 1).",
            "default": DEFAULT_SPG_DROPOUT,
        },
    )
    spg_module: str = field(
        default="linear",
        metadata={
            "help": "The kind of temporary module. 'linear' (paper Sec. 4.1-4.2): dropout, then a zero-initialised "
            "residual linear map on the state the head reads. 'block' (paper Sec. 4.3, 'SPG for NAS'): dropout, then "
            "copies of the model's last block (a transformer layer, a residual block), their output projections or "
            "last convolution zeroed so each starts as the identity; the chain runs on the whole sequence or feature "
            "map after the last block and the model applies what follows it (final norm, pooler, head) to each "
            "module's output. The paper's modules have no dropout: --spg_dropout 0 for its recipe.",
            "choices": list(SPG_MODULE_CHOICES),
        },
    )
    spg_block: str | None = field(
        default=None,
        metadata={
            "help": "With spg_module='block': dotted path of the model's last block (e.g. 'net.layer4.1'), copied for "
            "the temporary modules. Unset: the last module the forward calls that is an item of a list of blocks "
            "(nn.ModuleList or nn.Sequential) and returns the shape it is given (an HF model's last encoder or "
            "decoder layer, a ResNet's last residual block)."
        },
    )
    spg_blocks_per_module: int = field(
        default=1,
        metadata={"help": "With spg_module='block': copies of the last block in each temporary module (>= 1)."},
    )
    spg_head: str | None = field(
        default=None,
        metadata={
            "help": "Dotted path of the module that is the model's head (e.g. 'fc', 'net.classifier', 'heads.head'): "
            "the chain runs on its input and its output is the prediction. Needed for models that are not HF task "
            "classes (your own nn.Module, torchvision and timm networks); overrides the head family of an HF model."
        },
    )
    spg_auxiliary_head: str | None = field(
        default=None,
        metadata={
            "help": "With spg_head: dotted path of a second head whose loss the model adds with a weight (e.g. "
            "'aux_classifier' of torchvision's FCN and DeepLabV3); it gets a chain of its own. HF models' auxiliary "
            "heads (UperNet, BEiT, DPT) are found without it."
        },
    )
    spg_auxiliary_weight: float | None = field(
        default=None,
        metadata={
            "help": "With spg_auxiliary_head, and required there: the weight the model's loss gives that head "
            "(torchvision's segmentation recipe: 0.5), which SPG cannot read from the loss; the auxiliary chain's "
            "terms take it."
        },
    )
    spg_attach: str = field(
        default="tokens",
        metadata={
            "help": "'tokens': the chain runs on the hidden states the head reads (the first token, the last "
            "non-padding token, every token or frame) and the whole head after the encoder is shared. 'pooled': the "
            "reference code's form, on the input of the final linear classifier (after the pooler and dropout), "
            "sharing only that classifier; for sequence classifiers with a pooler or prediction head, and image "
            "classifiers.",
            "choices": list(SPG_ATTACH_CHOICES),
        },
    )
    # relu is the default because it measured better than the paper's form in docs/results.md: higher on CoLA, RTE
    # and MRPC, level on STS-B, significantly so on CoLA (+8 MCC points), significantly lower on no task.
    spg_activation: str = field(
        default="relu",
        metadata={
            "help": "'relu' (reference code, the default): h + ReLU(W h + b); W and b start at 0, so the ReLU passes "
            "no gradient and the modules never change: each is a dropout replica. 'none' (paper text): h + W h + b, "
            "modules that learn. 'relu' is the default because it measured better than 'none' on all-MiniLM-L6-v2 "
            "and GLUE: on 9 of 12 paired seeds, +8.1 MCC points on CoLA (docs/results.md).",
            "choices": list(SPG_ACTIVATION_CHOICES),
        },
    )
    # Unset, token-level tasks take 'batch': with 'survivors' both weak LMs in docs/results.md got worse and the
    # masked LM collapsed onto one token; with 'batch' both were level with plain fine-tuning.
    spg_normalize: str | None = field(
        default=None,
        metadata={
            "help": "Divide module t's loss by the number of examples (positions) that reached it ('survivors', "
            "reference code) or by the batch's ('batch', paper text). Unset (None): 'batch' for token-level tasks "
            "(token classification, masked, causal and seq2seq LM, SFT), 'survivors' for example-level ones; the "
            "first SPG log line and the model card say which applied. With 'survivors' both weak language models "
            "in docs/results.md got worse and the masked LM collapsed onto one token; with 'batch' both were level "
            "with plain fine-tuning.",
            "choices": list(SPG_NORMALIZE_CHOICES),
        },
    )
    spg_regression_tolerance: float = field(
        default=0.5,
        metadata={
            "help": "Regression heads: a prediction counts as correct when |prediction - label| <= this (> 0); the "
            "module terms are squared errors, as the model's MSE loss."
        },
    )
    spg_loss_normalization: bool = field(
        default=False,
        metadata={
            "help": "Multiply the loss by the detached factor exp(CE_0 - L), as the reference does for QA. Refused "
            "where Trainer divides the loss by the accumulated batch's item count (a model whose loss divides by "
            "it, or a compute_loss_func)."
        },
    )
    cold_start_epochs: float = field(
        default=0,
        metadata={
            "help": "Optimizer cold start: epochs at learning rate exactly 0 (AdamW's moments fill, the weights stay), "
            "then the schedule built for the remaining steps. What ColdStartCallback(epochs=...) gives any Trainer; "
            "do not pass both."
        },
    )
    cold_start_steps: int = field(
        default=0,
        metadata={
            "help": "The cold start in optimizer steps (ColdStartCallback(steps=...)); takes precedence over "
            "cold_start_epochs when > 0."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_spg_settings(self)

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments) -> SPGArguments:
        """The same arguments with the SPG settings at their defaults: what `SPGTrainer` trains with when handed a
        plain `TrainingArguments`. Every field keeps its value; the new object runs `__post_init__` on values the
        first one already normalised, which leaves them unchanged."""
        given = {f.name for f in fields(args) if f.init}
        unknown = sorted(given - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(
                f"args: the SPG trainer converts its {type(args).__name__} to {cls.__name__} keeping every field, but "
                f"{cls.__name__} lacks {', '.join(unknown)}. Use the SPG trainer made for these arguments "
                "(SPGSeq2SeqTrainer for Seq2SeqTrainingArguments, spg_hf.trl.SPGSFTTrainer for SFTConfig), or build "
                "the arguments as `@dataclass class MyArguments(SPGArguments, YourArguments)`."
            )
        converted = cls(**{name: getattr(args, name) for name in given})
        added = [f"{f.name}={getattr(converted, f.name)!r}" for f in fields(cls) if f.init and f.name not in given]
        logger.info(
            f"The SPG trainer got a {type(args).__name__}: converted it to {cls.__name__}, adding the SPG defaults "
            f"{', '.join(added)}."
        )
        return converted

    def spg_normalize_for(self, token_level: bool) -> str:
        """`spg_normalize`, or where it is unset the default for the task's trajectories."""
        if self.spg_normalize is not None:
            return self.spg_normalize
        return "batch" if token_level else "survivors"

    @property
    def spg_dropout_rates(self) -> list[float]:
        """One dropout rate per temporary module."""
        rates = self.spg_dropout
        if isinstance(rates, (int, float)):
            rates = [rates]
        if len(rates) == 1:
            return [float(rates[0])] * len(self.spg_weights)
        return [float(rate) for rate in rates]


@dataclass
class SPGTrainingArguments(SPGArguments, TrainingArguments):
    """`TrainingArguments` with the SPG settings (`SPGArguments`)."""


@dataclass
class SPGSeq2SeqTrainingArguments(SPGArguments, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with the SPG settings (`SPGArguments`), for `SPGSeq2SeqTrainer`."""


def validate_spg_settings(args: SPGArguments) -> None:
    """Raise a ValueError naming the first bad SPG setting. Runs at construction and again when training starts,
    since hyperparameter search writes trial values into the arguments afterwards."""
    if not args.spg_weights:
        raise ValueError("spg_weights must hold at least one weight (one per temporary module).")
    negative = [w for w in args.spg_weights if w < 0]
    if negative:
        raise ValueError(f"spg_weights must be >= 0, got {list(args.spg_weights)}.")
    rates = args.spg_dropout
    if not isinstance(rates, (int, float)) and len(rates) not in (1, len(args.spg_weights)):
        raise ValueError(
            f"spg_dropout has {len(rates)} rates but spg_weights has {len(args.spg_weights)} modules: "
            "give one rate, or one per module."
        )
    bad_rates = [rate for rate in args.spg_dropout_rates if not 0 <= rate < 1]
    if bad_rates:
        raise ValueError(f"spg_dropout rates must lie in [0, 1), got {args.spg_dropout}.")
    for name, choices in (
        ("spg_module", SPG_MODULE_CHOICES),
        ("spg_attach", SPG_ATTACH_CHOICES),
        ("spg_activation", SPG_ACTIVATION_CHOICES),
        ("spg_normalize", SPG_NORMALIZE_CHOICES),
    ):
        if getattr(args, name) not in choices and not (name == "spg_normalize" and args.spg_normalize is None):
            raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(args, name)!r}.")
    if args.spg_module != "block" and (args.spg_block or args.spg_blocks_per_module != 1):
        setting = "spg_block" if args.spg_block else "spg_blocks_per_module"
        raise ValueError(f"{setting} applies to spg_module='block'; spg_module is {args.spg_module!r}.")
    if args.spg_blocks_per_module < 1:
        raise ValueError(f"spg_blocks_per_module must be >= 1, got {args.spg_blocks_per_module}.")
    if args.spg_module == "block" and args.spg_attach == "pooled":
        raise ValueError(
            "spg_attach='pooled' runs the chain on the classifier's input; spg_module='block' runs it after the "
            "model's last block. Leave spg_attach at 'tokens'."
        )
    if args.spg_auxiliary_head and not args.spg_head:
        raise ValueError(
            f"spg_auxiliary_head={args.spg_auxiliary_head!r} needs spg_head (the main head): name both, as an HF "
            "model's auxiliary head is found without it."
        )
    if args.spg_auxiliary_head and (args.spg_auxiliary_weight is None or args.spg_auxiliary_weight < 0):
        raise ValueError(
            f"spg_auxiliary_weight must be the weight >= 0 your model's loss gives {args.spg_auxiliary_head!r} "
            f"(torchvision's segmentation recipe: 0.5), got {args.spg_auxiliary_weight}."
        )
    if args.spg_auxiliary_weight is not None and not args.spg_auxiliary_head:
        raise ValueError("spg_auxiliary_weight is set but spg_auxiliary_head names no auxiliary head.")
    if not args.spg_regression_tolerance > 0:
        raise ValueError(f"spg_regression_tolerance must be > 0, got {args.spg_regression_tolerance}.")
    if args.cold_start_epochs < 0:
        raise ValueError(f"cold_start_epochs must be >= 0, got {args.cold_start_epochs}.")
    if args.cold_start_steps < 0:
        raise ValueError(f"cold_start_steps must be >= 0, got {args.cold_start_steps}.")
