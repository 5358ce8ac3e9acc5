"""Every causal-LM class transformers ships, not a chosen few: where a generic tiny config builds and runs, SPG
either resolves a family whose head reproduces the model's logits from the state it captures, or refuses the model
with a ValueError before training, for a reason written down here.

The README's supported-models section states what the sweep measures, between its markers (COUNT_START, COUNT_END);
the test fails when that text differs, and `python tests/test_causal_lm_sweep.py` runs the sweep and rewrites it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import cache

import torch
import transformers
from generic_tiny import FIRST_TOKEN, VOCABULARY, generic_tiny_model, sweeping
from helpers import readme_section, write_readme_section
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from spg_hf.heads import head_family_for, verify_head

REWRITE = "python tests/test_causal_lm_sweep.py"
# Classes SPG refuses on purpose: what the refusal says, and why (as the README states it).
REFUSED = {
    # The LM head applied to every stream is no match for them.
    "ProphetNetForCausalLM": (
        "does not reproduce the model's logits",
        "whose logits are the first of its n-gram streams",
    ),
}
# The sweep's floor, in model types verified: far fewer than the README's count means the generic config broke.
LEAST_VERIFIED = 130


def tiny_causal_lm(model_type: str, class_name: str) -> transformers.PreTrainedModel | None:
    """The class built from the generic tiny config, or None where that config does not build, is too large, or the
    forward fails on it (the architecture needs settings the generic config does not know: not SPG's concern)."""
    try:
        model = generic_tiny_model(model_type, class_name).eval()
        with torch.no_grad():
            model(**batch())
        return model
    except Exception:
        return None


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(FIRST_TOKEN, VOCABULARY, (2, 8), generator=torch.Generator().manual_seed(0))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)


@dataclass
class Sweep:
    """What the sweep measured, per (model type, class name) of the causal-LM mapping: a class serves several model
    types (LlamaForCausalLM, GPT2LMHeadModel, ...), each built from its own config."""

    swept: list[tuple[str, str]] = field(default_factory=list)
    verified: list[tuple[str, str]] = field(default_factory=list)  # the shared head reproduces the logits
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # a ValueError, its message
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # anything else: the defect this test finds


@cache
def sweep() -> Sweep:
    result = Sweep()
    with sweeping():
        for model_type, class_name in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()):
            result.swept.append((model_type, class_name))
            model = tiny_causal_lm(model_type, class_name)
            if model is None:
                continue
            try:
                verify_head(model, head_family_for(model), batch())
                result.verified.append((model_type, class_name))
            except ValueError as error:
                result.refused[model_type, class_name] = str(error)
            except Exception as error:  # anything but a named refusal is the defect this test finds
                result.failures[model_type, class_name] = repr(error)
    return result


def test_every_causal_lm_class_that_builds_is_verified_or_refused_with_a_reason():
    result = sweep()
    assert not result.failures, f"crashed instead of training or refusing: {result.failures}"
    unexpected = {key: why for key, why in result.refused.items() if REFUSED.get(key[1], ("\0",))[0] not in why}
    assert not unexpected, f"refused without a reason written down in REFUSED: {unexpected}"
    assert len(result.verified) >= LEAST_VERIFIED, (
        f"only {len(result.verified)} model types built and passed: {result.verified}"
    )


def test_readme_states_the_measured_count():
    assert readme_count() == count(sweep()), f"the README's causal-LM count differs from the sweep's: run `{REWRITE}`"


# ---- the README's count ----

COUNT_START, COUNT_END = "<!-- causal-lm-sweep:start -->", "<!-- causal-lm-sweep:end -->"


def _types(pairs) -> str:
    """'N model types (M classes)': a class serves several model types."""
    pairs = list(pairs)
    classes = len({class_name for _, class_name in pairs})
    return f"{len(pairs)} model type{'s' * (len(pairs) != 1)} ({classes} class{'es' * (classes != 1)})"


def count(result: Sweep) -> str:
    """What the sweep measured, as the README states it."""
    built = result.verified + list(result.refused) + list(result.failures)
    text = (
        f"transformers {transformers.__version__}, `tests/test_causal_lm_sweep.py`: of the causal-LM mapping's "
        f"{_types(result.swept)}, {_types(built)} build and run at the generic tiny settings; the shared head "
        f"reproduces the logits of {_types(result.verified)}"
    )
    refused = sorted({class_name for _, class_name in result.refused})
    if refused:
        why = [f"{name}, {REFUSED[name][1]}" if name in REFUSED else name for name in refused]
        text += f"; SPG refuses {'; '.join(why)}"
    if result.failures:
        text += f"; {_types(result.failures)} crash"
    return text + "."


def readme_count() -> str:
    return readme_section(COUNT_START, COUNT_END)


def write_readme_count() -> None:
    write_readme_section(COUNT_START, COUNT_END, count(sweep()))


if __name__ == "__main__":
    began = time.perf_counter()
    write_readme_count()
    print(f"README causal-LM count rewritten ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
