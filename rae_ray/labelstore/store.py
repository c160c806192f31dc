"""The label store: one Delta Lake table per kind, joined onto a run's rows by key, appended to batch by batch.

Each published batch is one Delta commit (atomic: readers see all of it or none of it); concurrent runs append
concurrently and every commit lands (delta-rs retries a commit that lost the race; on S3 it commits with a
conditional put). Only successful results are stored: a failed call is retried by the next run. Two runs may
store the same key; lookups take one whole record per key (`delta.one_per_key`), and `rae-ray store compact`
keeps only that one. See docs/label_store.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from rae_ray.io import Storage, join_uri
from rae_ray.labelstore.delta import (
    BUCKET, KIND_KEYS, RUN_ID, STORED_AT, Table, as_record_batch, bucket_of, log_io, one_per_key, read_records,
)

LOOKUP_BUCKET = "_store_bucket"
_VERIFIED: set[str] = set()  # tables this process has checked are not in the earlier format


def key_of(uri: str, batch: pa.Table, key: str | None = None) -> str:
    """The key column of a kind's table: given, else the kind's (its folder's name), else a known key in the batch."""
    if key:
        return key
    kind = uri.rstrip("/").rsplit("/", 1)[-1]
    if kind in KIND_KEYS:
        return KIND_KEYS[kind]
    found = [k for k in KIND_KEYS.values() if k in batch.column_names]
    if len(found) != 1:
        raise ValueError(f"{uri}: cannot tell the store key of these rows (columns {batch.column_names}); pass key=")
    return found[0]


def publish_shard(batch: pa.Table, uri: str, storage: Storage, run_id: str, only_successful: bool = True,
                  unstored_image_status: tuple[str, ...] = (), key: str | None = None) -> pa.Table:
    """Append a batch's successful rows to the kind's table at `uri` as one commit; return the batch unchanged.

    Rows whose `image_status` is in `unstored_image_status` are not stored: their key names an image that the
    judge did not see (the endpoint refused it), so a later run that can send it must not take this label.
    """
    rows = batch
    if only_successful and "error" in batch.column_names:
        rows = rows.filter(pc.is_null(rows.column("error")))
    if unstored_image_status and "image_status" in rows.column_names:
        refused = pc.is_in(rows.column("image_status"), value_set=pa.array(list(unstored_image_status), pa.string()))
        rows = rows.filter(pc.invert(pc.fill_null(refused, False)))
    if rows.num_rows:
        table = Table(uri, storage)
        if uri not in _VERIFIED:
            table.open()  # raises on a folder of the earlier format, before a Delta log hides its shards
            _VERIFIED.add(uri)
        table.append(as_record_batch(rows, key_of(uri, rows, key), run_id))
    return batch


def _add_lookup_bucket(batch: pa.Table, key: str) -> pa.Table:
    return batch.append_column(LOOKUP_BUCKET, pc.fill_null(bucket_of(batch.column(key)), ""))


def attach(rows: pa.Table, stored: pa.Table, key: str, columns: dict[str, pa.DataType], prefix: str) -> pa.Table:
    """`rows` with the stored columns of each row's key as `prefix + name` (null where none), rows unchanged."""
    if stored.num_rows:
        key_type = rows.schema.field(key).type
        index = pc.index_in(rows.column(key), value_set=stored.column(key).cast(key_type))
        picked = stored.take(index)
    else:
        picked = None
    out = rows
    for name, dtype in columns.items():
        if picked is not None and name in picked.column_names:
            column = picked.column(name).cast(dtype)
        else:
            column = pa.nulls(rows.num_rows, dtype)
        out = out.append_column(prefix + name, column)
    return out


def join_bucket(rows: pa.Table, files: dict[str, list[dict]], uri: str, storage: Storage, key: str,
                columns: dict[str, pa.DataType], prefix: str) -> pa.Table:
    """One bucket's rows of a run with their stored records: reads only that bucket's files (see `read_records`)."""
    bucket = rows.column(LOOKUP_BUCKET)[0].as_py()
    rows = rows.drop_columns([LOOKUP_BUCKET])
    io = {"bucket": bucket}
    stored = pa.table({key: pa.array([], pa.string())})
    if files.get(bucket):
        fs, _ = storage.fs(uri)
        stored = read_records(fs, files[bucket], key, rows.column(key), list(columns), io)
        if stored.num_rows:
            stored = one_per_key(pl.from_arrow(stored), key).to_arrow()
    log_io(io)
    return attach(rows, stored, key, columns, prefix)


@dataclass(frozen=True)
class LabelStore:
    """Where results are kept across runs (local folder or s3:// prefix): one Delta table per kind under it."""

    uri: str
    storage: Storage

    def folder(self, kind: str) -> str:
        """The kind's Delta table (a folder, or a prefix on S3)."""
        return join_uri(self.uri, kind)

    def table(self, kind: str) -> Table:
        return Table(self.folder(kind), self.storage)

    def kinds(self) -> list[str]:
        """Kinds the store has a table or earlier-format shards for."""
        import pyarrow.fs as pafs

        fs, path = self.storage.fs(self.uri)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return [n for n in names if n in KIND_KEYS or self.table(n).exists()]

    def lookup(self, ds, kind: str, key: str, columns: dict[str, pa.DataType], prefix: str, num_partitions: int):
        """`ds` with the stored record of its key as `prefix`-ed columns (all null for a miss).

        The run's rows are grouped by the bucket of their key; each group reads only its bucket's files, skips
        files and row groups whose key range holds none of its keys, and reads the stored columns only of row
        groups with a match. Nothing of the store is shuffled or gathered on the driver but the list of files.
        """
        table = self.table(kind)
        files = table.files(key)
        if files.num_rows == 0:
            return ds.map_batches(attach, batch_format="pyarrow", fn_kwargs={
                "stored": pa.table({key: pa.array([], pa.string())}), "key": key, "columns": columns,
                "prefix": prefix})
        by_bucket: dict[str, list[dict]] = {}
        for file in files.to_pylist():
            by_bucket.setdefault(file[BUCKET] or "", []).append(file)
        return (
            ds.map_batches(_add_lookup_bucket, batch_format="pyarrow", fn_kwargs={"key": key})
            .groupby(LOOKUP_BUCKET, num_partitions=num_partitions)
            .map_groups(join_bucket, batch_format="pyarrow", fn_kwargs={
                "files": by_bucket, "uri": table.uri, "storage": self.storage, "key": key, "columns": columns,
                "prefix": prefix})
        )

    def _dataset(self, kind: str):
        """The kind's live records as a pyarrow dataset (file statistics attached, so filters skip files), or None."""
        table = self.table(kind).open()
        return table.to_pyarrow_dataset() if table is not None else None

    def records_for(self, kind: str, column: str, values, columns: list[str] | None = None,
                    key: str | None = None) -> pa.Table:
        """The stored records (one per key) whose `column` is in `values`, e.g. every label of some queries.

        The filter is pushed down: files and row groups whose statistics exclude all values are not read.
        """
        import pyarrow.dataset as pads

        key = key or KIND_KEYS.get(kind)
        values = pa.array(list(values) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values)
        dataset = self._dataset(kind)
        # A table without `column` (records stored before it existed) matches nothing.
        if dataset is None or len(values) == 0 or column not in dataset.schema.names:
            names = columns or ([key, column] if key else [column])
            return pa.table({name: pa.array([], pa.string()) for name in dict.fromkeys(names)})
        names = list(dict.fromkeys(columns or [n for n in dataset.schema.names if n != BUCKET]))
        present = [n for n in names if n in dataset.schema.names]
        read = list(dict.fromkeys([*present, *([key] if key else []), *[c for c in (STORED_AT, RUN_ID)
                                                                        if c in dataset.schema.names]]))
        found = dataset.to_table(columns=read, filter=pads.field(column).isin(values.cast(
            dataset.schema.field(column).type)))
        if key:
            found = one_per_key(pl.from_arrow(found), key).to_arrow()
        for name in names:  # a column no record has (yet) is null
            if name not in present:
                found = found.append_column(name, pa.nulls(found.num_rows))
        return found.select(names)

    def mean_completion_tokens(self, kind: str, model: str) -> float | None:
        """Mean completion tokens of `model`'s stored results (records keep the usage columns); None if none."""
        import pyarrow.dataset as pads

        dataset = self._dataset(kind)
        if dataset is None or "completion_tokens" not in dataset.schema.names:
            return None
        tokens = dataset.to_table(columns=["completion_tokens"], filter=(pads.field("model") == model)
                                  & (pads.field("completion_tokens") > 0)).column("completion_tokens")
        return float(np.mean(tokens.to_numpy())) if len(tokens) else None
