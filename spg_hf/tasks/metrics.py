"""The example scripts' metrics come from 🤗 evaluate, as in HF's example scripts, when the hub is reachable; offline,
or when a metric fails to load, the scripts compute the same metrics, under the same names, with their own code
(scikit-learn / scipy for GLUE, the official SQuAD scoring rules, numpy for accuracy)."""

from __future__ import annotations

import logging
from typing import Any

import huggingface_hub

logger = logging.getLogger("spg_hf.tasks.metrics")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE or evaluate's own HF_EVALUATE_OFFLINE is set."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return True
    # Imported only when online: evaluate takes long to import, and offline runs never need it.
    import evaluate

    return evaluate.config.HF_EVALUATE_OFFLINE


def load_hub_metric(path: str, config_name: str | None = None) -> Any | None:
    """`evaluate.load(path, config_name)`, or None (the caller uses its local implementation) when the hub is off or
    the metric cannot be loaded."""
    description = f"{path}/{config_name}" if config_name else path
    if hub_offline():
        logger.info(f"Offline: the {description} metric is computed locally, not by evaluate.")
        return None
    import evaluate

    try:
        return evaluate.load(path, config_name)
    except Exception as error:  # noqa: BLE001 - whatever stops the download, the local implementation stands in
        logger.warning(f"Could not load the {description} metric with evaluate ({error}); computing it locally.")
        return None
