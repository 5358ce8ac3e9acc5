"""The README's generated tables, printed or written from the code that defines them.

    python scripts/docs_tables.py            # print every table
    python scripts/docs_tables.py --write    # rewrite them in README.md, between their markers
    python scripts/docs_tables.py --check    # exit 1 when README.md differs from what this prints

Each table sits in README.md between `<!-- <name>:start -->` and `<!-- <name>:end -->` (its markers), and
tests/test_docs_tables.py fails when the text there differs from what `render(name)` gives. Tables:

  settings  the SPG settings of `SPGArguments`: each dataclass field's name, default and `help` metadata, in the
            order they are declared (spg_hf/spg_config.py). Prose that is not in a field's help goes after the table.
  families  the supported-models table: one row per head family of `spg_hf.heads.FAMILIES` (its name, its task's
            label from TASK_LABELS, its `rule`), with the classes tests/test_heads.py tests it on: the tiny-config
            classes (tests/helpers.py's TINY_CONFIGS) that resolve to it, and OTHERWISE_TESTED's note where a family
            is tested or checked some other way. Builds those tiny models (seconds), so it imports them only here.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REGENERATE = "python scripts/docs_tables.py --write"


def _code(value: object) -> str:
    """A default as the Python a user would write, in backticks."""
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _default(field: dataclasses.Field) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.metadata.get("default")


def _markdown(help_text: str) -> str:
    """A help text as a table cell: 'quoted' values become code and pipes are escaped."""
    text = re.sub(r"(?<![A-Za-z])'([^'\s][^']*)'(?![A-Za-z])", r"`\1`", help_text)
    return text.replace("|", "\\|")


def settings_table() -> str:
    """The SPG settings table: one row per `SPGArguments` field."""
    from spg_hf.spg_config import SPGArguments

    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(SPGArguments):
        rows.append(f"| `{field.name}` | {_code(_default(field))} | {_markdown(field.metadata['help'])} |")
    return "\n".join(rows)


# ---- families: the supported-models table ----

# The task column: a label per task key (`HeadFamily.task`), in the order the table lists the tasks.
TASK_LABELS = {
    "sequence_classification": "sequence classification / regression",
    "multiple_choice": "multiple choice",
    "question_answering": "extractive question answering",
    "token_classification": "token classification",
    "masked_lm": "masked language modelling",
    "causal_lm": "causal language modelling",
    "seq2seq_lm": "sequence-to-sequence language modelling (`SPGSeq2SeqTrainer`)",
    "ctc": "CTC speech recognition",
    "semantic_segmentation": "semantic segmentation",
}
# Sequence-classification families whose modules only image or audio models have (`frame_pooling` needs an audio
# model's frame mask, `image_pooled` a model that reads no text, `timm_classifier` a timm model, `distilled_pair`
# a distillation head): their task is named for those models.
MODALITY_LABELS = {
    "frame_pooling": "audio classification",
    "timm_classifier": "image classification",
    "image_pooled": "image and audio classification",
    "distilled_pair": "image classification",
}


class OtherwiseTested(NamedTuple):
    """A family tested or checked with something other than a TINY_CONFIGS class as it is configured there."""

    note: str  # the classes cell: it names no `...For...` class, which test_heads' README parser would count
    class_name: str | None = None  # a TINY_CONFIGS class the family is tested on with `overrides`, or None
    overrides: dict[str, Any] | None = None
    tests: tuple[str, ...] = ()  # the tests of tests/test_heads.py that run it


OTHERWISE_TESTED = {
    # Mean pooling is a ModernBERT config setting, not a class: tests/test_heads.py tests it as an override of the
    # tiny ModernBERT classifier, for its logits and (as the prediction_head_mean entry of ONE_CLASS_PER_FAMILY) in
    # the zero-weights run, whose construction check includes the loss check; not in the save or SPG-off tests.
    "prediction_head_mean": OtherwiseTested(
        note=(
            'ModernBERT with `classifier_pooling="mean"` (a config override of the tiny ModernBERT classifier: tested '
            "for its logits and in the zero-weights run, which runs the loss check; not in the save and SPG-off tests)"
        ),
        class_name="ModernBertForSequenceClassification",
        overrides={"classifier_pooling": "mean"},
        tests=("test_mean_pooling_prediction_head_reads_every_token", "test_spg_off_or_zero_weights_equal_trainer"),
    ),
    # timm does not install beside the torch CI runs, so no test builds a TimmWrapper model.
    "timm_classifier": OtherwiseTested(
        note="`TimmWrapper` image classifiers (checked by hand with timm, which does not install beside CI's torch: "
        "no test)"
    ),
}


def tiny_test_model(class_name: str, **overrides):
    """A class of TINY_CONFIGS as tests/test_heads.py's `build` makes it (3 labels where the task has labels)."""
    from helpers import tiny_model

    num_labels = {} if "QuestionAnswering" in class_name else {"num_labels": 3}
    return tiny_model(class_name, **num_labels, **overrides)


def tested_classes() -> dict[str, list[str]]:
    """Family name -> the TINY_CONFIGS classes that resolve to it, in TINY_CONFIGS's order."""
    from helpers import TINY_CONFIGS

    from spg_hf.heads import head_family_for

    classes: dict[str, list[str]] = {}
    for class_name in TINY_CONFIGS:
        classes.setdefault(head_family_for(tiny_test_model(class_name)).name, []).append(class_name)
    for family_name, otherwise in OTHERWISE_TESTED.items():
        if otherwise.class_name is not None:
            resolved = head_family_for(tiny_test_model(otherwise.class_name, **(otherwise.overrides or {}))).name
            if resolved != family_name:
                raise ValueError(f"OTHERWISE_TESTED[{family_name!r}] resolves to {resolved}, not {family_name}")
    return classes


@functools.cache
def families_table() -> str:
    """The supported-models table: one row per head family, in TASK_LABELS's order of tasks and, within a task, in
    FAMILIES's order (the order `head_family_for` tries them)."""
    import torch
    import transformers

    from spg_hf.heads import FAMILIES

    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))  # helpers, as the tests import it
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the tiny configs' warnings say nothing about the table
    try:
        with torch.random.fork_rng():
            classes = tested_classes()
    finally:
        transformers.logging.set_verbosity(verbosity)
    untested = {f.name for f in FAMILIES} - set(classes) - set(OTHERWISE_TESTED)
    if untested:
        raise ValueError(f"no tiny-config class resolves to {sorted(untested)}: add one, or say in OTHERWISE_TESTED")
    unknown = {f.task for f in FAMILIES} - set(TASK_LABELS)
    if unknown:
        raise ValueError(f"no task label for {sorted(unknown)}: add one to TASK_LABELS")
    rows = ["| family | task | head (chain runs on) | tested classes |", "|---|---|---|---|"]
    for family in sorted(FAMILIES, key=lambda f: list(TASK_LABELS).index(f.task)):  # stable: FAMILIES's order
        task = MODALITY_LABELS.get(family.name, TASK_LABELS[family.task])
        tested = ", ".join(classes.get(family.name, []))
        if family.name in OTHERWISE_TESTED:
            tested = ", ".join(filter(None, [tested, OTHERWISE_TESTED[family.name].note]))
        cells = [f"`{family.name}`", task, family.rule, tested]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"settings": settings_table, "families": families_table}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(name: str) -> str:
    return TABLES[name]()


def in_readme(name: str, text: str) -> str:
    """The text between a table's markers in `text` (the README), without the newlines next to the markers."""
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README.md must hold {start} and {end} once each, around the {name} table.")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def written(name: str, text: str) -> str:
    """`text` (the README) with the table `name` regenerated between its markers."""
    start, end = markers(name)
    in_readme(name, text)  # the markers are there, once each
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    return f"{before}{start}\n{render(name)}\n{end}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"tables, of {', '.join(TABLES)} (default: all)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the tables in README.md")
    action.add_argument("--check", action="store_true", help="exit 1 when README.md differs")
    args = parser.parse_args(argv)
    names = args.names or list(TABLES)
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        parser.error(f"no table {', '.join(unknown)}; the tables are {', '.join(TABLES)}")
    text = README.read_text()
    if args.write:
        for name in names:
            text = written(name, text)
        README.write_text(text)
        return 0
    if args.check:
        stale = [name for name in names if in_readme(name, text) != render(name)]
        for name in stale:
            print(f"README.md: the {name} table differs from the code; run `{REGENERATE}`.", file=sys.stderr)
        return 1 if stale else 0
    print("\n\n".join(render(name) for name in names))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
