"""What `SPGTrainer` adds to Trainer's model card after an SPG run: the method, its settings and the paper to cite."""

from __future__ import annotations

from typing import Any

from spg_hf.spg_config import SPGArguments

MODEL_CARD_TAG = "spg"
PAPER_TITLE = "Sequential Policy Gradient for Adaptive Hyperparameter Optimization"
PAPER_URL = "https://arxiv.org/abs/2506.15051"
CITATION = """\
@article{li2025sequential,
    title   = {{Sequential Policy Gradient for Adaptive Hyperparameter Optimization}},
    author  = {Zheng Li and Jerry Cheng and Huanying Helen Gu},
    journal = {arXiv preprint arXiv:2506.15051},
    year    = {2025}
}"""
# The arguments that shape SPG training, beyond the hyperparameters Trainer's card already lists.
SPG_SETTINGS = (
    "spg_weights",
    "spg_dropout",
    "spg_attach",
    "spg_activation",
    "spg_normalize",
    "spg_regression_tolerance",
    "spg_loss_normalization",
    "cold_start_epochs",
    "cold_start_steps",
)
# Trainer's card template has this section; the method goes at its top.
TRAINING_PROCEDURE_HEADING = "\n## Training procedure\n"


def add_spg_sections(card: str, args: SPGArguments, applied: dict[str, Any] | None = None) -> str:
    """Trainer's model card `card` with the SPG method and settings under "Training procedure", and a citation.
    `applied` holds the values training used for settings left unset (spg_normalize's default by task)."""
    settings = {name: getattr(args, name) for name in SPG_SETTINGS} | (applied or {})
    method = (
        f"\nThis model was fine-tuned with Sequential Policy Gradient (SPG), a method introduced in [{PAPER_TITLE}]"
        f"({PAPER_URL}), using `SPGTrainer` from spg-hf. During training, a chain of {len(args.spg_weights)} "
        "temporary modules (dropout and a residual linear layer) made extra predictions through the model's own "
        "head, and their losses, weighted and counted while the predictions stayed correct, were added to the "
        "usual loss. The modules were removed after training: this model has the base architecture and loads with "
        "its usual `AutoModelFor...` class.\n"
        "\n### SPG settings\n\n" + "\n".join(f"- {name}: {value}" for name, value in settings.items()) + "\n"
    )
    citation = f"\n## Citation\n\nCite SPG as:\n\n```bibtex\n{CITATION}\n```\n"
    # Should a later template lack the heading, partition leaves it empty and the section goes at the end.
    before, heading, after = card.partition(TRAINING_PROCEDURE_HEADING)
    return before + (heading or TRAINING_PROCEDURE_HEADING) + method + after + citation
