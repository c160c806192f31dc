"""Keeping a label store small and readable: compact (one sorted file per bucket, one record per key, old files
vacuumed), stats (records, files, bytes by kind and model) and migrate (the earlier shard format into the tables).
"""

from __future__ import annotations

import posixpath

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rae_ray.labelstore.commands import DEFAULT_RETENTION_HOURS
from rae_ray.labelstore.delta import BUCKET, KIND_KEYS, STORED_AT, as_record_batch, one_per_key
from rae_ray.labelstore.store import LabelStore

ROW_GROUP_ROWS = 16_384  # rows per row group after compaction: a small lookup skips row groups by key range


def _key(kind: str) -> str | None:
    return KIND_KEYS.get(kind)


def _bucket_keys(files: list[dict], fs, key: str) -> pa.ChunkedArray:
    return pa.chunked_array([pq.read_table(f["path"], filesystem=fs, columns=[key]).column(key).combine_chunks()
                             for f in files]) if files else pa.chunked_array([], pa.string())


def _is_sorted(keys: pa.ChunkedArray) -> bool:
    values = keys.combine_chunks()
    return len(values) < 2 or bool(pc.all(pc.greater_equal(values[1:], values[:-1])).as_py())


def compact_kind(store: LabelStore, kind: str, retention_hours: int = DEFAULT_RETENTION_HOURS,
                 row_group_rows: int = ROW_GROUP_ROWS) -> dict:
    """Rewrite each bucket holding several files, a key twice or unsorted keys as one file sorted by key (one record per key,
    the record lookups return), each bucket in its own commit; then checkpoint and vacuum.

    A bucket rewrite removes exactly the files it read, so records appended meanwhile by a running job stay.
    """
    from deltalake import WriterProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    table = store.table(kind)
    key = _key(kind)
    delta = table.open()
    if delta is None or key is None:
        return {"kind": kind, "skipped": "no table" if delta is None else "unknown key column"}
    files = table.files(key, delta)
    before = {"files": files.num_rows, "records": int(pc.sum(files.column("rows")).as_py() or 0)}
    fs, _ = store.storage.fs(table.uri)
    by_bucket: dict[str, list[dict]] = {}
    for file in files.to_pylist():
        by_bucket.setdefault(file[BUCKET], []).append(file)
    rewritten, duplicates, conflicts = 0, 0, []
    dataset = delta.to_pyarrow_dataset()
    for bucket, group in sorted(by_bucket.items()):
        keys = _bucket_keys(group, fs, key)
        repeated = len(keys) - len(pc.unique(keys))
        if len(group) == 1 and repeated == 0 and _is_sorted(keys):
            continue
        rows = dataset.to_table(filter=pads.field(BUCKET) == bucket)
        kept = one_per_key(pl.from_arrow(rows), key).sort(key).to_arrow().cast(rows.schema)
        try:
            write_deltalake(
                table.uri, kept, mode="overwrite", predicate=f"{BUCKET} = '{bucket}'", partition_by=[BUCKET],
                storage_options=table.options, target_file_size=1 << 30,
                writer_properties=WriterProperties(max_row_group_size=row_group_rows, compression="ZSTD"),
            )
        except CommitFailedError as error:  # another compaction got there first: its result stands
            conflicts.append(f"{bucket}: {error}")
            continue
        rewritten += 1
        duplicates += repeated
    delta = table.open()
    delta.create_checkpoint()
    vacuumed = delta.vacuum(retention_hours=retention_hours, dry_run=False,
                            enforce_retention_duration=retention_hours >= DEFAULT_RETENTION_HOURS)
    after = table.files(key, delta)
    return {"kind": kind, "buckets_rewritten": rewritten, "duplicates_removed": duplicates,
            "files_before": before["files"], "files_after": after.num_rows, "records_before": before["records"],
            "records_after": int(pc.sum(after.column("rows")).as_py() or 0), "files_vacuumed": len(vacuumed),
            "conflicts": conflicts, "version": delta.version()}


def compact(store: LabelStore, retention_hours: int = DEFAULT_RETENTION_HOURS) -> list[dict]:
    return [compact_kind(store, kind, retention_hours) for kind in store.kinds()]


def stats(store: LabelStore) -> dict:
    """Per kind: table version, records, distinct keys, live files and bytes, and records by model."""
    out = {"store": store.uri, "kinds": {}}
    for kind in store.kinds():
        table = store.table(kind)
        delta = table.open()
        if delta is None:
            continue
        key = _key(kind)
        files = table.files(key or "", delta)
        dataset = delta.to_pyarrow_dataset()
        names = dataset.schema.names
        read = [c for c in (key, "model") if c and c in names]
        frame = pl.from_arrow(dataset.to_table(columns=read)) if read else pl.DataFrame()
        by_model = {}
        if "model" in frame.columns:
            counts = frame.group_by("model").len().sort("model")
            by_model = {str(m): int(n) for m, n in zip(counts["model"], counts["len"])}
        out["kinds"][kind] = {
            "version": delta.version(), "records": int(pc.sum(files.column("rows")).as_py() or 0),
            "keys": int(frame[key].n_unique()) if key and key in frame.columns else None,
            "files": files.num_rows, "bytes": int(pc.sum(files.column("bytes")).as_py() or 0),
            "by_model": by_model,
        }
    return out


def _run_id_of(name: str) -> str:
    """`<run_id>-<32 hex>.parquet` (the earlier shard name) -> run_id."""
    stem = name[: -len(".parquet")]
    return stem[:-33] if len(stem) > 33 and stem[-33] == "-" else stem


def migrate_kind(store: LabelStore, kind: str) -> dict:
    """The earlier format's shards of one kind appended to its table (keys the table holds already are skipped, so
    running it twice adds nothing), then the shards deleted."""
    table = store.table(kind)
    key = _key(kind)
    shards = table.old_shards()
    if not shards or key is None:
        return {"kind": kind, "shards": len(shards), "records_read": 0, "records_added": 0}
    fs, _ = store.storage.fs(table.uri)
    parts = []
    for path in shards:
        shard = pq.read_table(path, filesystem=fs)
        if not shard.num_rows:
            continue
        rows = as_record_batch(shard, key, _run_id_of(posixpath.basename(path)))
        mtime = fs.get_file_info(path).mtime
        stamp = pa.array([mtime] * rows.num_rows, pa.timestamp("us", tz="UTC")) if mtime else rows.column(STORED_AT)
        parts.append(rows.set_column(rows.schema.get_field_index(STORED_AT), STORED_AT, stamp))
    records = pa.concat_tables(parts, promote_options="permissive") if parts else None
    read = records.num_rows if records is not None else 0
    added = 0
    if records is not None:
        delta = table.open() if table.exists() else None
        if delta is not None:
            held = delta.to_pyarrow_dataset().to_table(columns=[key]).column(key)
            records = records.filter(pc.invert(pc.is_in(records.column(key), value_set=pc.unique(held))))
        if records.num_rows:
            table.append(records)
            added = records.num_rows
    for path in shards:
        fs.delete_file(path)
    return {"kind": kind, "shards": len(shards), "records_read": read, "records_added": added}


def migrate(store: LabelStore) -> list[dict]:
    fs, path = store.storage.fs(store.uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    folders = {i.base_name for i in infos if i.type == pafs.FileType.Directory}
    return [migrate_kind(store, kind) for kind in KIND_KEYS if kind in folders]
