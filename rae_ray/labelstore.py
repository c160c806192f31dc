"""The label store: every guideline and label already paid for, keyed by everything that decided it.

Layout under the store URI (default `<output.uri>/_store`):
    guidelines/<run_id>-<uuid>.parquet   key guideline_id
    labels/<run_id>-<uuid>.parquet       key label_key
    captions/<run_id>-<uuid>.parquet     key caption_id

Shards are only ever added, each under a fresh name and published atomically (a local file is written to a
temporary name and renamed; an S3 object appears whole when its upload completes), so runs sharing a store
at the same time never overwrite each other and a reader never sees half a shard. Only successful results
are stored: a failed call is retried by the next run. Two runs may store the same key; lookups take one
record per key (a consistent whole record, never a mix).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from rae_ray.io import Storage, join_uri
from rae_ray.stages.prepare import normalize_query

RECORD = "_store_record"


def label_key(guideline_id: str | None, product_hash: str, model: str, prompt_version: str, scale: Sequence[dict],
              image_mode: str = "text", caption_id: str | None = None, query: str | None = None) -> str:
    """Everything that decides a label: guideline (query, its model and prompt), product content, judge, scale.

    Without a guideline (llm.guidelines.enabled false) the normalized query takes its place.
    """
    decided_by = guideline_id if guideline_id is not None else ["query", normalize_query(query or "")]
    key = json.dumps([decided_by, product_hash, model, prompt_version, list(scale), image_mode, caption_id],
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def add_label_keys(batch: pa.Table, model: str, prompt_version: str, scale: list[dict], image_mode: str) -> pa.Table:
    """Add `label_key` to pairs that carry query, guideline_id and product_hash, and the image's caption or content id."""
    guideline_ids = batch.column("guideline_id").to_pylist()
    hashes = batch.column("product_hash").to_pylist()
    queries = batch.column("query").to_pylist()
    image_column = next((c for c in ("caption_id", "image_id") if c in batch.column_names), None)
    captions = batch.column(image_column).to_pylist() if image_column else [None] * batch.num_rows
    keys = [label_key(g, h, model, prompt_version, scale, image_mode, c, q)
            for g, h, c, q in zip(guideline_ids, hashes, captions, queries)]
    return batch.append_column("label_key", pa.array(keys, pa.string()))


def pack_records(batch: pa.Table, key: str, columns: list[str]) -> pa.Table:
    """(key, one JSON text of the stored columns): lets a max-aggregate pick one whole record per key."""
    rows = batch.select(columns).to_pylist()
    records = [json.dumps(row, sort_keys=True, default=str) for row in rows]
    return pa.table({key: batch.column(key), RECORD: pa.array(records, pa.string())})


def unpack_records(batch: pa.Table, columns: dict[str, pa.DataType], prefix: str) -> pa.Table:
    """Inverse of `pack_records` after a join: stored columns as `prefix + name` (null where no record)."""
    records = [json.loads(r) if r is not None else {} for r in batch.column(RECORD).to_pylist()]
    out = batch.drop_columns([RECORD])
    for name, dtype in columns.items():
        out = out.append_column(prefix + name, pa.array([r.get(name) for r in records], dtype))
    return out


def publish_shard(batch: pa.Table, uri: str, storage: Storage, run_id: str, only_successful: bool = True) -> pa.Table:
    """Write a batch's successful rows as one new shard under `uri`, atomically; return the batch unchanged."""
    rows = batch
    if only_successful and "error" in batch.column_names:
        rows = pl.from_arrow(batch).filter(pl.col("error").is_null()).to_arrow()
    if rows.num_rows:
        storage.write_table(join_uri(uri, f"{run_id}-{uuid.uuid4().hex}.parquet"), rows)
    return batch


@dataclass(frozen=True)
class LabelStore:
    """Where results are kept across runs (local folder or s3:// prefix)."""

    uri: str
    storage: Storage

    def folder(self, kind: str) -> str:
        return join_uri(self.uri, kind)

    def shards(self, kind: str) -> list[str]:
        """Files of one kind (paths inside the filesystem); empty when the store has none yet."""
        folder = self.folder(kind)
        if not self.storage.exists(folder):
            return []
        try:
            return self.storage.parquet_files(folder)
        except ValueError:
            return []

    def lookup(self, ds, kind: str, key: str, columns: dict[str, pa.DataType], prefix: str, num_partitions: int):
        """`ds` with the stored record of its key as `prefix`-ed columns (all null for a miss)."""
        import ray

        shards = self.shards(kind)
        if not shards:
            return ds.map_batches(
                lambda b: b.append_column(RECORD, pa.nulls(b.num_rows, pa.string())), batch_format="pyarrow"
            ).map_batches(unpack_records, batch_format="pyarrow", fn_kwargs={"columns": columns, "prefix": prefix})
        from ray.data.aggregate import Max

        fs, _ = self.storage.fs(self.uri)
        stored = (
            ray.data.read_parquet(shards, filesystem=fs)
            .map_batches(pack_records, batch_format="pyarrow", fn_kwargs={"key": key, "columns": list(columns)})
            .groupby(key, num_partitions=num_partitions)
            .aggregate(Max(RECORD, alias_name=RECORD))
        )
        return ds.join(stored, join_type="left_outer", num_partitions=num_partitions, on=(key,)).map_batches(
            unpack_records, batch_format="pyarrow", fn_kwargs={"columns": columns, "prefix": prefix}
        )
