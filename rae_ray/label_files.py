"""Label files, from people or an LLM run (Parquet file or folder, or CSV; local, s3:// or sample:): read whole and
mapped onto the project's grades."""

from __future__ import annotations

import polars as pl
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rae_ray.config import HumanLabelsConfig
from rae_ray.evaluation.agreement import HumanLabels
from rae_ray.io import InputError, Storage, resolve_uri

__all__ = ["judge_labels", "load_human_labels", "map_grades", "map_label_columns", "parse_grade_map", "read_table"]


def parse_grade_map(text: str | None) -> dict[int, int]:
    """'3=2,2=1,1=1,0=0' -> {3: 2, 2: 1, 1: 1, 0: 0}."""
    if not text:
        return {}
    mapping = {}
    for item in text.split(","):
        source, sep, target = item.partition("=")
        try:
            mapping[int(source)] = int(target)
        except ValueError:
            raise InputError(f"--grade-map: {item!r} is not of the form LABEL=GRADE with integers") from None
        if not sep:
            raise InputError(f"--grade-map: {item!r} is not of the form LABEL=GRADE")
    return mapping


def read_table(uri: str, storage: Storage, role: str) -> pl.DataFrame:
    """A whole Parquet (file or folder) or CSV input as a polars frame."""
    resolved = resolve_uri(uri)
    fs, path = storage.fs(resolved)
    if resolved.endswith(".csv"):
        with fs.open_input_stream(path) as stream:
            return pl.from_arrow(pacsv.read_csv(stream))
    tables = []
    for file in storage.parquet_files(resolved):
        try:
            tables.append(pq.read_table(file, filesystem=fs))
        except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file
            raise InputError(f"{role} file {file}: not a readable Parquet file ({error})") from None
    return pl.concat([pl.from_arrow(t) for t in tables], how="diagonal_relaxed")


def _integer_column(labels: pl.DataFrame, column: str, source: str) -> pl.Series:
    raw = labels[column]
    if raw.dtype.is_integer():
        return raw.cast(pl.Int64)
    try:
        return raw.cast(pl.Int64, strict=True)
    except pl.exceptions.InvalidOperationError:
        raise InputError(f"labels {source}: column '{column}' has type {labels[column].dtype}, expected integers") from None


def map_label_columns(labels: pl.DataFrame, columns: list[str], grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """(query, product_id, *columns) with each label column mapped onto the project's grades; one row per pair."""
    for needed in ("query", "product_id", *columns):
        if needed not in labels.columns:
            raise InputError(f"labels {source}: missing column '{needed}' (has: {', '.join(labels.columns)})")
    mapped = []
    for column in columns:
        raw = _integer_column(labels, column, source)
        if grade_map:
            unknown = sorted(set(raw.drop_nulls().unique().to_list()) - set(grade_map))
            if unknown:
                raise InputError(f"labels {source}: column '{column}' has values {unknown} that --grade-map does not map")
            raw = raw.replace_strict(grade_map, return_dtype=pl.Int64, default=None)
        mapped.append(raw.alias(column).cast(pl.Int64))
    return labels.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), *mapped).unique(
        subset=["query", "product_id"], keep="first", maintain_order=True
    )


def map_grades(labels: pl.DataFrame, column: str, grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """(query, product_id, grade) from a label column, mapped onto the project's grades."""
    return map_label_columns(labels, [column], grade_map, source).rename({column: "grade"})


def judge_labels(labels: pl.DataFrame, column: str, grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """Labels for evaluation: query, product_id, grade, plus label, reasoning, error, title, product_hash and source
    when the file has them (an LLM run's labels folder has all but title; human labels usually none)."""
    graded = map_grades(labels, column, grade_map, source)
    extra = [c for c in ("label", "reasoning", "error", "title", "product_hash", "source")
             if c in labels.columns and c != column
             and labels[c].dtype == pl.String]
    if not extra:
        return graded
    details = labels.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), *extra).unique(
        subset=["query", "product_id"], keep="first", maintain_order=True
    )
    return graded.join(details, on=["query", "product_id"], how="left", maintain_order="left")


def load_human_labels(config: HumanLabelsConfig, storage: Storage | None = None) -> HumanLabels:
    """Read human labels (Parquet/CSV, local or s3://) and map the label and rater columns through grade_map."""
    storage = storage or Storage()
    raw = read_table(config.uri, storage, "human labels")
    columns = [config.column, *[c for c in config.rater_columns if c != config.column]]
    mapped = map_label_columns(raw, columns, dict(config.grade_map), config.uri)
    frame = mapped.rename({config.column: "grade"})
    raters = tuple("grade" if c == config.column else c for c in config.rater_columns)
    return HumanLabels(frame=frame, rater_columns=raters, source=config.uri)
