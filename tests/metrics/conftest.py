"""Fixtures: the chorus human-judgment sample mapped onto the 3-grade scale."""

import os
from pathlib import Path

import polars as pl
import pytest

import rae_ray

_CANDIDATES = [
    os.environ.get("RAE_RAY_CHORUS"),
    Path(list(rae_ray.__path__)[0]) / "data" / "chorus",  # bundled with the package
    "/work/shared/data/chorus",
]
CHORUS = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "search_log.parquet").exists()), Path("missing"))
HUMAN_TO_GRADE = {3: 2, 2: 1, 1: 1, 0: 0}  # README: 3 -> 2, 1 and 2 -> 1, 0 -> 0


@pytest.fixture(scope="session")
def chorus_log() -> pl.DataFrame:
    if not (CHORUS / "search_log.parquet").exists():
        pytest.skip(f"chorus sample not found at {CHORUS} (set RAE_RAY_CHORUS)")
    return pl.read_parquet(CHORUS / "search_log.parquet")


@pytest.fixture(scope="session")
def chorus_judgments() -> pl.DataFrame:
    if not (CHORUS / "judgments.parquet").exists():
        pytest.skip(f"chorus sample not found at {CHORUS} (set RAE_RAY_CHORUS)")
    judgments = pl.read_parquet(CHORUS / "judgments.parquet")
    return judgments.with_columns(
        pl.col(c).replace_strict(HUMAN_TO_GRADE, default=None, return_dtype=pl.Int8)
        for c in ("rater_1", "rater_2", "rater_3", "final_rating")
    )


@pytest.fixture(scope="session")
def chorus_labels(chorus_judgments) -> pl.DataFrame:
    return chorus_judgments.select("query", "product_id", pl.col("final_rating").alias("grade"))


@pytest.fixture(scope="session")
def chorus_query_metrics(chorus_log, chorus_labels) -> pl.DataFrame:
    from rae_ray.metrics.evaluate import query_metrics

    return query_metrics(chorus_log, chorus_labels)
