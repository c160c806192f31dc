"""Votes: every pair judged `samples` times by each judge (llm.annotate.model and the panel), then one label.

A pair becomes one vote row per (judge, sample) before the label store's lookup, each under its own key
(`labelstore.keys.vote_key`), so the store answers votes one by one and raising `samples` sends only the new ones.
The label is the majority grade of the votes that gave one; a tie goes to the LOWER grade (the cautious label);
`confidence` is the winning grade's share of those votes. Pure batch functions, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from rae_ray.config import AnnotateModelConfig
from rae_ray.labelstore.keys import add_label_keys, vote_key
from rae_ray.metrics.agreement import agreement_from_confusion
from rae_ray.stages.common import USAGE_COLUMNS

PAIR = ["query", "product_id"]
VOTE_STRUCT = pa.struct([("model", pa.string()), ("sample", pa.int32()), ("grade", pa.int16())])
# Added to a label row by the vote: confidence (null when no vote gave a grade), failed votes, every vote.
CONFIDENCE_COLUMNS = {"confidence": pa.float64(), "votes_failed": pa.int32(), "votes": pa.list_(VOTE_STRUCT)}
HISTOGRAM_BINS = 10  # confidence bins of width 0.1 over [0, 1]; the last includes 1


class VoteModelConfig(AnnotateModelConfig):
    """The judge's settings for one sample: sample i > 0 is sent with `seed` i, so the requests of a pair's
    samples differ (a server that seeds its sampling, or the simulated judge's noise, answers each anew)."""

    seed: int | None = Field(default=None, description="`seed` sent with the request (not a config key).")


def vote_model(model: AnnotateModelConfig, sample: int) -> AnnotateModelConfig:
    if sample == 0:
        return model
    return VoteModelConfig(**model.model_dump(), seed=sample)


def explode_votes(batch: pa.Table, models: Sequence[str], samples: int, prompt_version: str, scale: list[dict],
                  image_mode: str, examples_prompt_version: str | None = None) -> pa.Table:
    """Pairs -> one row per (pair, judge, sample): `label_key` the vote's store key, `pair_key` the label key of
    the first judge (the pair's key in labels/), `vote_judge` the judge's index, `vote_sample` the sample.
    A `label_key` the pairs already carry is replaced (each judge's key is made here)."""
    if "label_key" in batch.column_names:
        batch = batch.drop_columns(["label_key"])
    parts = []
    pair_key = None
    for judge, model in enumerate(models):
        keyed = add_label_keys(batch, model, prompt_version, scale, image_mode, examples_prompt_version)
        keys = keyed.column("label_key").to_pylist()
        if pair_key is None:
            pair_key = pa.array(keys, pa.string())
        for sample in range(samples):
            part = keyed.drop_columns(["label_key"])
            parts.append(part.append_column("label_key", pa.array([vote_key(k, sample) for k in keys], pa.string()))
                         .append_column("pair_key", pair_key)
                         .append_column("vote_judge", pa.array([judge] * batch.num_rows, pa.int32()))
                         .append_column("vote_sample", pa.array([sample] * batch.num_rows, pa.int32())))
    return pa.concat_tables(parts)


def aggregate_votes(votes: pa.Table, output: Sequence[str]) -> pa.Table:
    """Vote rows (annotate output with pair_key, vote_judge, vote_sample) -> one label row per pair: `output`'s
    columns, then confidence, votes_failed and votes (ordered by judge, then sample).

    The label's reasoning, model and image fields are those of the first vote (by judge, then sample) for the
    winning grade; cache_hit is true when every vote came from the store; usage adds up; error is set only when
    no vote gave a grade (then it is the first vote's error)."""
    frame = pl.from_arrow(votes).sort([*PAIR, "vote_judge", "vote_sample"])
    graded = frame.filter(pl.col("grade").is_not_null())
    tally = graded.group_by([*PAIR, "grade"]).agg(pl.len().alias("_n"))
    winners = (tally.with_columns(pl.col("_n").sum().over(PAIR).alias("_total"))
               .sort([*PAIR, "_n", "grade"], descending=[False, False, True, False])
               .unique(subset=PAIR, keep="first")
               .select(*PAIR, pl.col("grade").alias("_winner"), (pl.col("_n") / pl.col("_total")).alias("confidence")))
    chosen = (frame.join(winners, on=PAIR, how="left")
              .with_columns((pl.col("grade") == pl.col("_winner")).fill_null(False).alias("_wins"))
              .sort([*PAIR, "_wins", "vote_judge", "vote_sample"], descending=[False, False, True, False, False])
              .unique(subset=PAIR, keep="first", maintain_order=True))
    per_pair = frame.group_by(PAIR).agg(
        *[pl.col(c).sum() for c in USAGE_COLUMNS],
        pl.col("cache_hit").all().alias("_all_hits"),
        pl.col("grade").is_null().sum().cast(pl.Int32).alias("votes_failed"),
        pl.struct(pl.col("model"), pl.col("vote_sample").alias("sample"), pl.col("grade")).alias("votes"),
    )
    labels = (chosen.drop([*USAGE_COLUMNS, "cache_hit"])
              .join(per_pair, on=PAIR, how="left")
              .with_columns(pl.col("_all_hits").alias("cache_hit"), pl.col("pair_key").alias("label_key"),
                            pl.when(pl.col("grade").is_not_null()).then(None).otherwise(pl.col("error")).alias("error")))
    return conform_labels(labels.to_arrow(), output)


def conform_labels(table: pa.Table, output: Sequence[str]) -> pa.Table:
    """`output` then the confidence columns, in fixed types (the map_groups of many pairs must agree)."""
    reference = {name: table.schema.field(name).type for name in table.column_names}
    columns = {}
    for name in output:
        dtype = {"grade": pa.int16(), "cache_hit": pa.bool_(), "seconds": pa.float64()}.get(
            name, pa.int64() if name in USAGE_COLUMNS else pa.string())
        columns[name] = table.column(name).cast(dtype) if name in reference else pa.nulls(table.num_rows, dtype)
    for name, dtype in CONFIDENCE_COLUMNS.items():
        columns[name] = table.column(name).cast(dtype)
    return pa.table(columns)


# -- what the votes say, per batch (summed by the caller) -----------------------------------------------------


def confidence_counts(batch: pa.Table) -> pa.Table:
    """Pairs per confidence bin (bin i: [i/10, (i+1)/10), the last also holds 1), and the confidences' sum."""
    values = batch.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64)
    values = values[~np.isnan(values)]
    bins = np.minimum((values * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    counts = np.bincount(bins, minlength=HISTOGRAM_BINS)
    return pa.table({"bin": pa.array(range(HISTOGRAM_BINS), pa.int32()), "pairs": pa.array(counts, pa.int64()),
                     "confidence_sum": pa.array([float(values[bins == b].sum()) for b in range(HISTOGRAM_BINS)]),
                     "unanimous": pa.array([int((values == 1.0).sum())] + [0] * (HISTOGRAM_BINS - 1), pa.int64())})


def vote_confusions(batch: pa.Table) -> pa.Table:
    """For every two vote slots (judge model and sample) that both graded a pair: (slot_a, slot_b, grade_a,
    grade_b, n) counts over the batch's pairs."""
    frame = pl.from_arrow(batch.select(["votes"])).with_row_index("_pair").explode("votes").unnest("votes")
    frame = frame.drop_nulls("grade").with_columns(
        pl.format("{}#{}", pl.col("model"), pl.col("sample")).alias("slot"))
    both = frame.join(frame, on="_pair", suffix="_b").filter(pl.col("slot") < pl.col("slot_b"))
    counts = both.group_by("slot", "slot_b", "grade", "grade_b").agg(pl.len().alias("n"))
    return counts.select(pl.col("slot").alias("slot_a"), "slot_b", pl.col("grade").cast(pl.Int64).alias("grade_a"),
                         pl.col("grade_b").cast(pl.Int64), pl.col("n").cast(pl.Int64)).to_arrow()


def vote_agreement(confusions: pl.DataFrame, grades: Sequence[int]) -> dict:
    """Exact agreement and Cohen's kappa of every two vote slots, averaged over slot pairs: all of them, those of
    one judge's samples (between_samples) and those of different judges (between_judges)."""
    grades = sorted(grades)
    index = {g: i for i, g in enumerate(grades)}
    by_slots: dict[tuple[str, str], dict] = {}
    for (slot_a, slot_b), group in confusions.group_by(["slot_a", "slot_b"]):
        matrix = np.zeros((len(grades), len(grades)), dtype=np.int64)
        for grade_a, grade_b, n in group.select("grade_a", "grade_b", "n").iter_rows():
            matrix[index[grade_a], index[grade_b]] += n
        by_slots[(slot_a, slot_b)] = agreement_from_confusion(matrix)

    def mean_of(keys: list[tuple[str, str]]) -> dict:
        values = [by_slots[k] for k in keys]
        out: dict = {"slot_pairs": len(values)}
        for measure in ("exact", "cohen_kappa"):
            finite = [v[measure] for v in values if v[measure] == v[measure]]  # NaN kappas (one grade only) left out
            out[measure] = round(float(np.mean(finite)), 4) if finite else None
        return out

    def judge(slot: str) -> str:
        return slot.rsplit("#", 1)[0]

    keys = sorted(by_slots)
    same = [k for k in keys if judge(k[0]) == judge(k[1])]
    return {**mean_of(keys), "between_samples": mean_of(same),
            "between_judges": mean_of([k for k in keys if k not in same])}


__all__ = [
    "CONFIDENCE_COLUMNS", "VOTE_STRUCT", "VoteModelConfig", "aggregate_votes", "confidence_counts", "explode_votes",
    "vote_agreement", "vote_confusions", "vote_model",
]
