"""SQuAD data from files: the original nested json or flat rows (the hub's columns), checked as it is read, and a
split of one source into train and eval parts by article."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from sklearn.model_selection import GroupShuffleSplit

REQUIRED_COLUMNS = ("id", "context", "question", "answers")
SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)


def read_squad_file(path: str) -> datasets.Dataset:
    """Read a SQuAD-format .json (original nested format, or flat rows under 'data') or a flat .json/.jsonl.

    Raises a ValueError naming the file and the missing key when the content is not SQuAD data.
    """
    file = Path(path)
    if file.suffix not in (".json", ".jsonl"):
        raise ValueError(f"{file}: expected a .json or .jsonl file.")
    text = file.read_text(encoding="utf-8")
    content = None
    if file.suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            pass  # maybe JSON lines under a .json name, which datasets' json loader accepts too
    if content is None:
        try:
            content = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: not valid JSON or JSON lines ({error}).") from error
    if isinstance(content, dict):
        if "data" not in content:
            raise ValueError(f"{file} is not in SQuAD format: top-level key 'data' is missing.")
        content = content["data"]
    if not isinstance(content, list) or not content:
        raise ValueError(f"{file} is not in SQuAD format: expected a non-empty list of articles or rows.")
    nested = isinstance(content[0], dict) and "paragraphs" in content[0]
    if nested:
        rows = _flatten_articles(content, file)
    else:
        rows = [_flat_row(row, f"{file}: row {i}") for i, row in enumerate(content)]
    return datasets.Dataset.from_list(rows, features=SQUAD_FEATURES)


def _require(mapping: Any, key: str, where: str, file: Path) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{file} is not in SQuAD format: {where} has no key {key!r}.")
    return mapping[key]


def _flatten_articles(articles: list[Any], file: Path) -> list[dict[str, Any]]:
    """Original SQuAD nesting (article > paragraph > question) to the hub's flat rows."""
    rows = []
    for i, article in enumerate(articles):
        title = _require(article, "title", f"data[{i}]", file)
        for j, paragraph in enumerate(_require(article, "paragraphs", f"data[{i}]", file)):
            context = _require(paragraph, "context", f"data[{i}].paragraphs[{j}]", file)
            for k, qa in enumerate(_require(paragraph, "qas", f"data[{i}].paragraphs[{j}]", file)):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                answers = [] if qa.get("is_impossible", False) else _require(qa, "answers", where, file)
                for a, answer in enumerate(answers):
                    for key in ("text", "answer_start"):
                        _require(answer, key, f"{where}.answers[{a}]", file)
                rows.append(
                    {
                        "id": str(_require(qa, "id", where, file)),
                        "title": title,
                        "context": context,
                        "question": _require(qa, "question", where, file),
                        "answers": {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [answer["answer_start"] for answer in answers],
                        },
                    }
                )
    return rows


def _flat_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is not an object with the columns {list(REQUIRED_COLUMNS)}.")
    missing = [column for column in REQUIRED_COLUMNS if column not in row]
    if missing:
        raise ValueError(f"{where} is missing column(s) {missing}; SQuAD rows need {list(REQUIRED_COLUMNS)}.")
    answers = row["answers"]
    if not isinstance(answers, dict) or {"text", "answer_start"} - answers.keys():
        raise ValueError(f"{where}: 'answers' must be {{'text': [...], 'answer_start': [...]}}, got {answers!r}.")
    return {**{column: row[column] for column in REQUIRED_COLUMNS}, "title": row.get("title", "")}


def split_by_article(
    dataset: datasets.Dataset, eval_fraction: float, seed: int, source: str = "dataset"
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split questions into (train, eval) so that every article (title) lies wholly in one part.

    ceil(eval_fraction * number of articles) articles go to eval; the choice depends only on the titles and seed.
    """
    if "title" not in dataset.column_names:
        raise ValueError(f"{source}: split_by_article_eval_fraction needs a 'title' column.")
    titles = dataset["title"]
    if len(set(titles)) < 2:
        raise ValueError(f"{source}: split_by_article_eval_fraction needs at least 2 articles (titles).")
    splitter = GroupShuffleSplit(n_splits=1, test_size=eval_fraction, random_state=seed)
    try:
        train_indices, eval_indices = next(splitter.split(np.zeros(len(titles)), groups=titles))
    except ValueError as error:
        raise ValueError(f"{source}: split_by_article_eval_fraction={eval_fraction}: {error}") from error
    return dataset.select(np.sort(train_indices)), dataset.select(np.sort(eval_indices))
