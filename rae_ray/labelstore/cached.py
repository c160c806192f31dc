"""An LLM stage behind the label store: look the keys up, send only the misses to an actor pool, publish each
finished batch to the store as it completes (so a killed run resumes from there), and union hits and new results.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rae_ray.config import StageComputeConfig
from rae_ray.labelstore.store import LabelStore, publish_shard
from rae_ray.profiling import ActorProfile
from rae_ray.runtime import actor_map, merged, progress, with_schema
from rae_ray.stages.annotate import IMAGE_REJECTED, NO_IMAGE, NO_VISION
from rae_ray.stages.captions import CAPTION_COLUMNS
from rae_ray.stages.common import USAGE_COLUMNS, LLMStageConfig

STORED_PREFIX = "stored_"


@dataclass(frozen=True)
class StageSpec:
    """How one LLM stage meets the label store: its key, the columns stored, the columns it outputs."""

    name: str
    store_kind: str
    key: str
    stored: dict[str, pa.DataType]
    output: list[str]
    # Results not stored although successful: labels judged without the image their key names.
    unstored_image_status: tuple[str, ...] = ()
    # Stored columns the stage's input already has (what the key hashes): handed through to the output, and a
    # hit keeps its own (records stored before such a column existed lack it).
    carried: tuple[str, ...] = ()
    # Output columns kept out of the store's shards (a vote's judge and sample: its key says both).
    unstored_columns: tuple[str, ...] = ()


GUIDELINE_SPEC = StageSpec(
    name="guidelines", store_kind="guidelines", key="guideline_id",
    stored={"guideline": pa.string(), "model": pa.string(), "prompt_version": pa.string()},
    output=["query", "guideline_id", "guideline", "model", "prompt_version", "cache_hit", "error", *USAGE_COLUMNS],
)
LABEL_SPEC = StageSpec(
    name="annotate", store_kind="labels", key="label_key",
    stored={"grade": pa.int16(), "label": pa.string(), "reasoning": pa.string(), "model": pa.string(),
            "prompt_version": pa.string(), "query_key": pa.string(), "judge_context": pa.string()},
    output=["query", "product_id", "product_hash", "label_key", "grade", "label", "reasoning", "model",
            "prompt_version", "guideline_id", "caption_id", "image_id", "image_status", "cache_hit", "error",
            "query_key", "judge_context", *USAGE_COLUMNS],
    unstored_image_status=(NO_VISION, IMAGE_REJECTED),
    carried=("query_key", "judge_context"),
)
CAPTION_SPEC = StageSpec(
    name="captions", store_kind="captions", key="caption_id",
    stored={"caption": pa.string(), "model": pa.string(), "prompt_version": pa.string()},
    output=[*CAPTION_COLUMNS, *USAGE_COLUMNS],
)


def hits_as_output(batch: pa.Table, spec_output: list[str], stored: dict[str, pa.DataType],
                   carried: tuple[str, ...] = ()) -> pa.Table:
    """Rows answered by the store, in the stage's output layout (cache_hit true, no calls, no tokens)."""
    n = batch.num_rows
    columns = {}
    for name in spec_output:
        if name in carried and name in batch.column_names:
            columns[name] = batch.column(name).cast(stored[name])
        elif name in stored:
            columns[name] = batch.column(STORED_PREFIX + name).cast(stored[name])
        elif name == "cache_hit":
            columns[name] = pa.array([True] * n, pa.bool_())
        elif name == "error":
            columns[name] = pa.nulls(n, pa.string())
        elif name in USAGE_COLUMNS:
            columns[name] = pa.array([0] * n, pa.float64() if name == "seconds" else pa.int64())
        elif name in batch.column_names:
            columns[name] = batch.column(name)
        elif name == "image_status":
            columns[name] = pa.array([NO_IMAGE] * n, pa.string())
        else:
            columns[name] = pa.nulls(n, pa.string())
    return pa.table(columns)


def conform(batch: pa.Table, spec_output: list[str]) -> pa.Table:
    """A stage's own output in the spec's column order and the same types as `hits_as_output`."""
    n = batch.num_rows
    columns = {}
    for name in spec_output:
        column = batch.column(name) if name in batch.column_names else pa.nulls(n, pa.string())
        if name in USAGE_COLUMNS:
            column = column.cast(pa.float64() if name == "seconds" else pa.int64())
        columns[name] = column
    return pa.table(columns)


def output_schema(spec: StageSpec) -> pa.Schema:
    """The columns and types a stage's output has, hits and new results alike."""
    stored = pa.table({STORED_PREFIX + name: pa.array([], dtype) for name, dtype in spec.stored.items()})
    return hits_as_output(stored, spec.output, spec.stored, spec.carried).schema


def lookup(store: LabelStore, ds, spec: StageSpec, num_partitions: int):
    """(hits, misses): the rows of `ds` the store answers, in the stage's output layout, and the others as given.

    The lookup is materialized once; both halves are lazy filters of it.
    """
    from ray.data.expressions import col

    looked = store.lookup(ds, spec.store_kind, spec.key, spec.stored, STORED_PREFIX, num_partitions).materialize()
    first_stored = STORED_PREFIX + next(iter(spec.stored))
    hits = looked.filter(expr=col(first_stored).is_not_null()).map_batches(
        hits_as_output, batch_format="pyarrow",
        fn_kwargs={"spec_output": spec.output, "stored": spec.stored, "carried": spec.carried},
    )
    misses = looked.filter(expr=col(first_stored).is_null()).drop_columns(
        [STORED_PREFIX + name for name in spec.stored]
    )
    return hits, misses


class KeyedStage:
    """Runs an LLM stage on store misses: hands each row's store key through, lays the output out as the spec
    says, and publishes each batch's successful rows to the store the moment the batch is judged.

    Publishing from inside the actor (not from an operator downstream) is what makes a killed run lose at most
    the batches in flight: Ray Data packs a task's output batches into one block and hands it on only when the
    task ends, so a downstream writer sees nothing until a whole input block is done.
    """

    def __init__(self, stage_cls, key: str, output: list[str], config: LLMStageConfig,
                 publish: dict[str, Any] | None = None, carried: tuple[str, ...] = (),
                 unstored: tuple[str, ...] = ()):
        self.stage = stage_cls(config)
        self.key = key
        self.output = output
        self.publish = publish
        self.carried = carried
        self.unstored = list(unstored)
        self.profile = ActorProfile.start(stage_cls.__name__)  # RAE_RAY_PROFILE_DIR set: where the CPU goes

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.profile is not None:
            self.profile.enter()
        out = await self.stage(batch)
        for name in (self.key, *self.carried):
            if name in batch.column_names and name not in out.column_names:
                out = out.append_column(name, batch.column(name))
        out = conform(out, self.output)
        if self.publish is not None:
            await asyncio.to_thread(self._publish, out)
        if self.profile is not None:
            self.profile.batch_done(out.num_rows)
        return out

    def _publish(self, out: pa.Table) -> None:
        started = time.thread_time()
        publish_shard(out.drop_columns(self.unstored), **self.publish)
        if self.profile is not None:
            self.profile.add_thread_cpu(time.thread_time() - started)


def cached_stage(ds, spec: StageSpec, stage_cls, stage_config: LLMStageConfig, compute: StageComputeConfig, *,
                 store: LabelStore | None, run_id: str, parts: int, prepare_misses=None):
    """Store lookup -> actor pool on the misses (each batch published to the store by the actor) -> hits + new.

    Nothing to do (no row: every image refused, every pair unjudgeable) is an empty output with the stage's columns.
    """
    ds = ds.materialize()
    if ds.count() == 0:
        return with_schema(ds, output_schema(spec))
    # Nothing stored yet: every row is a miss, no lookup pass (a store of the earlier format raises here, before any call).
    if store is None or store.table(spec.store_kind).open() is None:
        misses = ds
        hits = None
    else:
        hits, misses = lookup(store, ds, spec, parts)
        if misses.count() == 0:  # everything was in the store: no actor pool to start
            hits = hits.materialize()
            progress(f"{spec.name}: all {hits.count()} from the label store")
            return with_schema(hits, output_schema(spec))
    if prepare_misses is not None:
        misses = prepare_misses(misses)
    publish = None
    if store is not None:
        publish = {"uri": store.folder(spec.store_kind), "storage": store.storage, "run_id": run_id,
                   "unstored_image_status": spec.unstored_image_status, "key": spec.key}
    new = actor_map(misses, KeyedStage, {"stage_cls": stage_cls, "key": spec.key, "output": spec.output,
                                         "config": stage_config, "publish": publish, "carried": spec.carried,
                                         "unstored": spec.unstored_columns}, compute)
    return merged(new if hits is None else hits.union(new)).materialize()
