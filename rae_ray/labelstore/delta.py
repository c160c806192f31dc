"""The label store's tables on disk: one Delta Lake table per kind, partitioned by a bucket of the key.

Everything that touches `deltalake` or a table's files is here: storage options, appends (one commit each),
the live files with their key statistics, reading the records of some keys, and one record per key.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rae_ray.io import InputError, Storage, is_s3, s3_endpoint

BUCKET = "bucket"
N_BUCKETS = 16  # the first hex digit of the key: 16 partitions
COMMIT_RETRIES = 100  # versions a commit moves on when concurrent writers took the one it tried
RUN_ID = "run_id"
STORED_AT = "stored_at"
# The key of each kind; a new kind (e.g. people's grades) is one more entry, or passes its key explicitly.
KIND_KEYS = {"labels": "label_key", "guidelines": "guideline_id", "captions": "caption_id", "human": "human_key"}
# Benchmarks set this to a folder: every lookup task appends what it read there as one JSON line.
IO_LOG_ENV = "RAE_RAY_STORE_IO_LOG"
_HEX = set("0123456789abcdef")


class OldStoreFormat(InputError):
    """A store folder holding the shards of rae-ray's earlier format and no Delta table."""


def storage_options(storage: Storage, uri: str) -> dict[str, str]:
    """delta-rs options for `uri`: the endpoint and region `Storage` uses. Credentials are never put here: delta-rs
    takes them from the standard AWS chain (environment, profile, instance role), as pyarrow does."""
    if not is_s3(uri):
        return {}
    options = {"AWS_REGION": storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
               or "us-east-1"}
    endpoint = s3_endpoint(storage.endpoint_url)
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def bucket_of(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The partition of each key: its first hex digit (store keys are hex digests); a key that does not start with
    one takes the first hex digit of its sha256. Null keys have a null bucket."""
    first = pc.utf8_lower(pc.utf8_slice_codeunits(keys, 0, 1))
    if isinstance(first, pa.ChunkedArray):
        first = first.combine_chunks()
    values = first.to_pylist()
    if all(v is None or v in _HEX for v in values):
        return first
    raw = keys.to_pylist()
    return pa.array([None if k is None else v if v in _HEX else hashlib.sha256(k.encode()).hexdigest()[0]
                     for k, v in zip(raw, values)], pa.string())


def as_record_batch(table: pa.Table, key: str, run_id: str) -> pa.Table:
    """What is stored for a batch: its columns (null-typed ones as strings), `bucket`, `run_id`, `stored_at`."""
    columns = {}
    for name in table.column_names:
        if name in (BUCKET, RUN_ID, STORED_AT):
            continue
        column = table.column(name)
        columns[name] = column.cast(pa.string()) if pa.types.is_null(column.type) else column
    n = table.num_rows
    columns[BUCKET] = bucket_of(table.column(key))
    columns[RUN_ID] = pa.array([run_id] * n, pa.string())
    columns[STORED_AT] = pa.array([int(time.time() * 1_000_000)] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


@dataclass(frozen=True)
class Table:
    """One kind's Delta table (it may not exist yet)."""

    uri: str
    storage: Storage

    @property
    def options(self) -> dict[str, str]:
        return storage_options(self.storage, self.uri)

    def exists(self) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.uri, storage_options=self.options)

    def open(self):
        """The table, or None when nothing was stored yet; an old-format folder raises `OldStoreFormat`."""
        from deltalake import DeltaTable

        if DeltaTable.is_deltatable(self.uri, storage_options=self.options):
            return DeltaTable(self.uri, storage_options=self.options)
        if self.old_shards():
            raise OldStoreFormat(
                f"{self.uri}: a label store in rae-ray's earlier format (Parquet shards, no Delta table); "
                f"run `rae-ray store migrate --store {self.uri.rsplit('/', 1)[0]}` once, then run again")
        return None

    def old_shards(self) -> list[str]:
        """Parquet files lying directly in the table's folder (the earlier format's shards; paths inside fs)."""
        fs, path = self.storage.fs(self.uri)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

    def append(self, rows: pa.Table, attempts: int = 5) -> None:
        """One Delta commit adding `rows` (already laid out by `as_record_batch`); concurrent appends all land.

        delta-rs retries a commit that lost the race for a version (up to COMMIT_RETRIES versions on); a commit
        that still fails (e.g. two writers creating the table at once) is tried again whole after a short pause.
        """
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError

        for attempt in range(attempts):
            try:
                write_deltalake(self.uri, rows, mode="append", partition_by=[BUCKET], schema_mode="merge",
                                storage_options=self.options,
                                commit_properties=CommitProperties(max_commit_retries=COMMIT_RETRIES))
                return
            except CommitFailedError:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.5) * (attempt + 1))

    def files(self, key: str, table=None) -> pa.Table:
        """Live data files: path (inside the filesystem), bucket, rows, bytes, and the key's min and max."""
        table = table if table is not None else self.open()
        empty = pa.table({"path": pa.array([], pa.string()), BUCKET: pa.array([], pa.string()),
                          "rows": pa.array([], pa.int64()), "bytes": pa.array([], pa.int64()),
                          "min": pa.array([], pa.string()), "max": pa.array([], pa.string())})
        if table is None:
            return empty
        actions = pa.table(table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return empty
        _, root = self.storage.fs(self.uri)
        names = actions.column_names

        def column(name, dtype):
            return actions.column(name) if name in names else pa.nulls(actions.num_rows, dtype)

        from urllib.parse import unquote

        return pa.table({
            "path": pa.array([f"{root}/{unquote(p)}" for p in actions.column("path").to_pylist()], pa.string()),
            BUCKET: column(f"partition.{BUCKET}", pa.string()), "rows": column("num_records", pa.int64()),
            "bytes": column("size_bytes", pa.int64()),
            "min": column(f"min.{key}", pa.string()), "max": column(f"max.{key}", pa.string()),
        })


# Keys whose newest record wins: people's grades (`rae-ray review import`), where a later import corrects an earlier.
NEWEST_WINS = {"human_key"}


def one_per_key(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """One record per key, the same whatever the files' order: the first stored (earliest `stored_at`, then
    `run_id`, then the stored values themselves); for the keys in NEWEST_WINS the last stored."""
    if frame.is_empty():
        return frame
    order = [key] + [c for c in (STORED_AT, RUN_ID) if c in frame.columns]
    order += [c for c, dtype in frame.schema.items()
              if c not in order and (dtype == pl.Utf8 or dtype == pl.Boolean or dtype.is_numeric())]
    descending = [key in NEWEST_WINS and column != key for column in order]
    return frame.sort(order, descending=descending, nulls_last=True).unique(key, keep="first", maintain_order=True)


class CountingFile:
    """A readable file that counts the bytes pyarrow asks the filesystem for (footer and column chunks)."""

    def __init__(self, raw):
        self.raw = raw
        self.bytes_read = 0
        self.closed = False

    def read(self, n=-1):
        data = self.raw.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, offset, whence=0):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def size(self):
        return self.raw.size()

    def readable(self):
        return True

    def seekable(self):
        return True

    def close(self):
        self.closed = True
        self.raw.close()


def _may_hold(keys: np.ndarray, low, high) -> bool:
    """Whether any of the sorted `keys` lies in [low, high] (unknown bounds: yes)."""
    if low is None or high is None:
        return True
    at = np.searchsorted(keys, low, side="left")
    return bool(at < len(keys) and keys[at] <= high)


def read_records(fs: pafs.FileSystem, files: list[dict], key: str, keys: pa.Array, columns: list[str],
                 io: dict | None = None) -> pa.Table:
    """The stored records of `keys` in `files` (all their versions): files and row groups whose key range holds
    none of the keys are skipped, the key column is read first, and the other columns only of row groups with a
    match. `io` (if given) counts files, row groups and bytes read."""
    wanted = pc.unique(keys.drop_null() if hasattr(keys, "drop_null") else keys)
    sorted_keys = np.sort(np.asarray(wanted.to_pylist(), dtype=object))
    extra = [c for c in (RUN_ID, STORED_AT) if c not in columns and c != key]
    parts = []
    for file in files:
        if not len(sorted_keys) or not _may_hold(sorted_keys, file.get("min"), file.get("max")):
            continue
        counted = CountingFile(fs.open_input_file(file["path"]))
        try:
            parquet = pq.ParquetFile(counted)
            schema = parquet.schema_arrow
            key_index = schema.get_field_index(key)
            groups = []
            for g in range(parquet.num_row_groups):
                stats = parquet.metadata.row_group(g).column(key_index).statistics
                has = stats is not None and stats.has_min_max
                if _may_hold(sorted_keys, stats.min if has else None, stats.max if has else None):
                    groups.append(g)
            for g in groups:
                keys_read = _plain_strings(parquet.read_row_group(g, columns=[key])).column(key)
                found = pc.is_in(keys_read, value_set=wanted.cast(keys_read.type))
                if not pc.any(found).as_py():
                    continue
                rest = [c for c in (*columns, *extra) if c != key and schema.get_field_index(c) >= 0]
                records = _plain_strings(parquet.read_row_group(g, columns=rest)).append_column(key, keys_read)
                parts.append(records.filter(found))
                if io is not None:
                    io["row_groups"] = io.get("row_groups", 0) + 1
        finally:
            counted.close()
        if io is not None:
            io["files"] = io.get("files", 0) + 1
            io["bytes"] = io.get("bytes", 0) + counted.bytes_read
    if not parts:
        return pa.table({key: pa.array([], pa.string())})
    return pa.concat_tables(parts, promote_options="permissive")


def _plain_strings(table: pa.Table) -> pa.Table:
    """String views (files rewritten by delta-rs operations such as `update` store them) as plain strings: Arrow's
    `is_in` and the record layout take plain strings only."""
    fields = [pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) or pa.types.is_large_string(f.type)
              else f for f in table.schema]
    return table.cast(pa.schema(fields)) if fields != list(table.schema) else table


def log_io(io: dict) -> None:
    """Append what a lookup task read to the benchmark's log folder, when one is set."""
    folder = os.environ.get(IO_LOG_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as handle:
            handle.write(json.dumps(io) + "\n")
