"""Shards of the label store: reading them (one record per key), joining them onto a dataset, publishing new ones.

Shards are only ever added, each under a fresh name and published atomically (a local file is written to a
temporary name and renamed; an S3 object appears whole when its upload completes), so runs sharing a store
at the same time never overwrite each other and a reader never sees half a shard. Only successful results
are stored: a failed call is retried by the next run. Two runs may store the same key; lookups take one
record per key (a consistent whole record, never a mix).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from rae_ray.io import Storage, join_uri

RECORD = "_store_record"


def pack_records(batch: pa.Table, key: str, columns: list[str]) -> pa.Table:
    """(key, one JSON text of the stored columns): lets a max-aggregate pick one whole record per key.

    A column a shard lacks (stored before the column existed) is left out of its records: null when unpacked."""
    rows = batch.select([c for c in columns if c in batch.column_names]).to_pylist()
    records = [json.dumps(row, sort_keys=True, default=str) for row in rows]
    return pa.table({key: batch.column(key), RECORD: pa.array(records, pa.string())})


def unpack_records(batch: pa.Table, columns: dict[str, pa.DataType], prefix: str) -> pa.Table:
    """Inverse of `pack_records` after a join: stored columns as `prefix + name` (null where no record)."""
    records = [json.loads(r) if r is not None else {} for r in batch.column(RECORD).to_pylist()]
    out = batch.drop_columns([RECORD])
    for name, dtype in columns.items():
        out = out.append_column(prefix + name, pa.array([r.get(name) for r in records], dtype))
    return out


def publish_shard(batch: pa.Table, uri: str, storage: Storage, run_id: str, only_successful: bool = True,
                  unstored_image_status: tuple[str, ...] = ()) -> pa.Table:
    """Write a batch's successful rows as one new shard under `uri`, atomically; return the batch unchanged.

    Rows whose `image_status` is in `unstored_image_status` are not stored: their key names an image that the
    judge did not see (the endpoint refused it), so a later run that can send it must not take this label.
    """
    rows = batch
    if only_successful and "error" in batch.column_names:
        rows = pl.from_arrow(batch).filter(pl.col("error").is_null()).to_arrow()
    if unstored_image_status and "image_status" in rows.column_names:
        rows = pl.from_arrow(rows).filter(~pl.col("image_status").is_in(list(unstored_image_status))).to_arrow()
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

    def records_for(self, kind: str, column: str, values: list, columns: list[str]) -> pa.Table:
        """The stored records of one kind whose `column` is in `values`, with `columns` (every record, several per
        key when several runs stored it). Read with pushdown over the shards' unified schema: a shard without
        `column` matches nothing, a column a shard lacks is null, one no shard has is a null column."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        shards = self.shards(kind)
        empty = pa.table({name: pa.nulls(0) for name in columns})
        if not shards or not values:
            return empty
        fs, _ = self.storage.fs(self.uri)
        factory = ds.FileSystemDatasetFactory(fs, shards, ds.ParquetFileFormat())
        schema = factory.inspect(promote_options="default", fragments=None)  # None: every shard's schema
        if column not in schema.names:
            return empty
        present = [name for name in columns if name in schema.names]
        table = factory.finish(schema).to_table(columns=present, filter=pc.field(column).isin(list(values)))
        for name in columns:
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows))
        return table.select(columns)

    def mean_completion_tokens(self, kind: str, model: str, max_shards: int = 200) -> float | None:
        """Mean completion tokens of `model`'s stored results (shards keep the usage columns); None if none."""
        import pyarrow.parquet as pq

        shards = self.shards(kind)
        if not shards:
            return None
        fs, _ = self.storage.fs(self.uri)
        frame = pl.concat([pl.from_arrow(pq.read_table(f, filesystem=fs, columns=["model", "completion_tokens"]))
                           for f in shards[:max_shards]])
        frame = frame.filter((pl.col("model") == model) & (pl.col("completion_tokens") > 0))
        return float(frame["completion_tokens"].mean()) if frame.height else None
