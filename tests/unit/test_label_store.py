"""The label store's Delta tables on a local folder, without Ray: publish, one record per key, lookups by bucket,
records_for, compaction, stats and migration from the earlier shard format."""

from __future__ import annotations

import hashlib
import json
import random

import polars as pl
import pyarrow as pa
import pytest

from rae_ray.cli import main
from rae_ray.io import Storage, join_uri
from rae_ray.labelstore import maintenance
from rae_ray.labelstore.delta import IO_LOG_ENV, OldStoreFormat, bucket_of
from rae_ray.labelstore.store import LOOKUP_BUCKET, LabelStore, _add_lookup_bucket, join_bucket, publish_shard

COLUMNS = {"grade": pa.int16(), "label": pa.string(), "reasoning": pa.string(), "model": pa.string()}


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def labels(ids, grade: int = 1, model: str = "judge", query: str = "q") -> pa.Table:
    n = len(ids)
    return pa.table({
        "query": [f"{query}{i % 5}" for i in ids], "label_key": [key(i) for i in ids],
        "grade": pa.array([grade] * n, pa.int16()), "label": [f"grade {grade}"] * n,
        "reasoning": [f"why {i} is {grade}" for i in ids], "model": [model] * n,
        "error": pa.nulls(n, pa.string()), "completion_tokens": [10 + grade] * n,
    })


def lookup(store: LabelStore, keys: list[str], kind: str = "labels", key_column: str = "label_key") -> pl.DataFrame:
    """The store's lookup, bucket by bucket as the Ray job runs it (join_bucket per group), without Ray."""
    table = store.table(kind)
    by_bucket: dict[str, list[dict]] = {}
    for file in table.files(key_column).to_pylist():
        by_bucket.setdefault(file["bucket"], []).append(file)
    rows = _add_lookup_bucket(pa.table({key_column: keys}), key_column)
    out = []
    for bucket in sorted(set(rows.column(LOOKUP_BUCKET).to_pylist())):
        group = rows.filter(pa.compute.equal(rows.column(LOOKUP_BUCKET), bucket))
        out.append(join_bucket(group, by_bucket, table.uri, store.storage, key_column, COLUMNS, "stored_"))
    return pl.from_arrow(pa.concat_tables(out)).sort(key_column)


@pytest.fixture
def store(tmp_path) -> LabelStore:
    return LabelStore(str(tmp_path / "store"), Storage())


def test_each_batch_is_one_commit_partitioned_by_bucket(store):
    for start in range(0, 60, 20):
        publish_shard(labels(range(start, start + 20)), store.folder("labels"), store.storage, f"run{start}")
    table = store.table("labels")
    assert table.open().version() == 2  # three commits: versions 0, 1, 2
    files = table.files("label_key")
    records = pl.read_delta(store.folder("labels"))
    assert records.height == 60 and files["rows"].to_pylist() and sum(files["rows"].to_pylist()) == 60
    # Each file holds one bucket: the key's first hex digit, also the file's folder (bucket=X).
    for file in files.to_pylist():
        assert f"/bucket={file['bucket']}/" in file["path"]
        assert file["min"][0] == file["max"][0] == file["bucket"]
    assert set(records["run_id"]) == {"run0", "run20", "run40"} and records["stored_at"].null_count() == 0


def test_bucket_is_the_first_hex_digit_or_of_a_hash():
    assert bucket_of(pa.array(["A0ff", "3b", None], pa.string())).to_pylist() == ["a", "3", None]
    assert bucket_of(pa.array(["vote:xyz"])).to_pylist() == [hashlib.sha256(b"vote:xyz").hexdigest()[0]]


def test_lookup_gives_one_whole_record_per_key_whatever_the_order(store):
    shared = list(range(10))
    publish_shard(labels(shared, grade=2), store.folder("labels"), store.storage, "early")
    publish_shard(labels(shared + [10, 11], grade=0), store.folder("labels"), store.storage, "late")
    wanted = [key(i) for i in (*shared, 10, 11, 99)]
    found = lookup(store, wanted)
    assert found.height == len(wanted)
    by_key = {row["label_key"]: row for row in found.to_dicts()}
    for i in shared:  # first stored wins, and the record is whole (grade, label and reasoning of one run)
        row = by_key[key(i)]
        assert (row["stored_grade"], row["stored_label"], row["stored_reasoning"]) == (2, "grade 2", f"why {i} is 2")
    assert by_key[key(10)]["stored_grade"] == 0
    assert by_key[key(99)]["stored_grade"] is None and by_key[key(99)]["stored_label"] is None
    # The choice does not depend on the order files are read in.
    table = store.table("labels")
    files = table.files("label_key").to_pylist()
    random.Random(3).shuffle(files)
    rows = _add_lookup_bucket(pa.table({"label_key": [key(i) for i in shared]}), "label_key")
    for bucket in set(rows.column(LOOKUP_BUCKET).to_pylist()):
        group = rows.filter(pa.compute.equal(rows.column(LOOKUP_BUCKET), bucket))
        out = join_bucket(group, {bucket: [f for f in files if f["bucket"] == bucket]}, table.uri, store.storage,
                          "label_key", COLUMNS, "stored_")
        assert set(out.column("stored_grade").to_pylist()) == {2}


def test_failed_rows_are_not_stored_and_an_empty_store_answers_nothing(store):
    batch = labels(range(4))
    batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array([None, "HTTP 500", None, None]))
    assert lookup(store, [key(0)])["stored_grade"].to_list() == [None]
    publish_shard(batch, store.folder("labels"), store.storage, "run")
    assert sorted(pl.read_delta(store.folder("labels"))["label_key"]) == sorted([key(0), key(2), key(3)])


def test_records_for_and_mean_completion_tokens(store):
    publish_shard(labels(range(20), grade=1, query="a"), store.folder("labels"), store.storage, "one")
    publish_shard(labels(range(10), grade=2, query="a"), store.folder("labels"), store.storage, "two")
    publish_shard(labels(range(20, 30), grade=2, model="other", query="b"), store.folder("labels"), store.storage, "x")
    found = store.records_for("labels", "query", ["a1", "b2"], columns=["label_key", "query", "grade"])
    assert found.column_names == ["label_key", "query", "grade"]
    expected = {key(i) for i in range(20) if i % 5 == 1} | {key(i) for i in range(20, 30) if i % 5 == 2}
    assert set(found.column("label_key").to_pylist()) == expected and found.num_rows == len(expected)
    grades = dict(zip(found.column("label_key").to_pylist(), found.column("grade").to_pylist()))
    assert grades[key(1)] == 1 and grades[key(22)] == 2  # one record per key: the first stored
    assert store.records_for("labels", "query", ["nope"]).num_rows == 0
    assert store.mean_completion_tokens("labels", "judge") == pytest.approx((20 * 11 + 10 * 12) / 30)
    assert store.mean_completion_tokens("labels", "missing") is None
    assert LabelStore(store.uri + "-empty", store.storage).mean_completion_tokens("labels", "judge") is None


def test_compact_collapses_duplicates_and_keeps_the_lookups(store, capsys):
    for run in range(6):
        publish_shard(labels(range(run * 30, run * 30 + 40), grade=run % 3), store.folder("labels"), store.storage,
                      f"night{run}")
    guidelines = pa.table({"guideline_id": [key(i)[:20] for i in range(5)], "guideline": ["text"] * 5,
                           "model": ["judge"] * 5})
    publish_shard(guidelines, store.folder("guidelines"), store.storage, "g")
    wanted = [key(i) for i in range(0, 200, 3)]
    before = lookup(store, wanted)
    files_before = store.table("labels").files("label_key").num_rows
    assert main(["store", "compact", "--store", store.uri]) == 0
    printed = capsys.readouterr().out
    assert "labels:" in printed and "duplicate keys collapsed" in printed and "guidelines:" in printed
    files = store.table("labels").files("label_key")
    assert files.num_rows < files_before and files.num_rows == len(set(files["bucket"].to_pylist()))
    records = pl.read_delta(store.folder("labels"))
    assert records.height == records["label_key"].n_unique() == 6 * 30 + 10
    assert lookup(store, wanted).equals(before)
    # Compacted files are sorted by key: a lookup of a few keys reads fewer row groups than there are.
    again = maintenance.compact(store)
    assert again[0]["buckets_rewritten"] == 0 and again[0]["duplicates_removed"] == 0


def test_row_groups_without_the_keys_are_not_read(store, tmp_path, monkeypatch):
    publish_shard(labels(range(4000)), store.folder("labels"), store.storage, "big")
    maintenance.compact_kind(store, "labels", row_group_rows=50)
    log = tmp_path / "io"
    monkeypatch.setenv(IO_LOG_ENV, str(log))
    lookup(store, [key(7)])
    one = [json.loads(line) for f in log.iterdir() for line in f.read_text().splitlines()]
    for f in log.iterdir():
        f.unlink()
    lookup(store, [key(i) for i in range(4000)])
    everything = [json.loads(line) for f in log.iterdir() for line in f.read_text().splitlines()]
    assert sum(r.get("row_groups", 0) for r in one) == 1 and sum(r.get("files", 0) for r in one) == 1
    assert sum(r.get("row_groups", 0) for r in everything) >= 4000 // 50
    assert 0 < sum(r["bytes"] for r in one if "bytes" in r) * 10 < sum(r["bytes"] for r in everything if "bytes" in r)


def test_stats_table_and_json(store, capsys):
    publish_shard(labels(range(30)), store.folder("labels"), store.storage, "a")
    publish_shard(labels(range(20, 40), model="other"), store.folder("labels"), store.storage, "b")
    assert main(["store", "stats", "--store", store.uri, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["kinds"]["labels"]
    assert result["records"] == 50 and result["keys"] == 40 and result["by_model"] == {"judge": 30, "other": 20}
    assert result["files"] == store.table("labels").files("label_key").num_rows and result["bytes"] > 0
    assert main(["store", "stats", "--store", store.uri]) == 0
    printed = capsys.readouterr().out
    assert "labels" in printed and "other" in printed and "50" in printed


def write_old_shards(store: LabelStore, kind: str, batches: list[tuple[str, pa.Table]]) -> None:
    """A store of the earlier format: one `<run_id>-<uuid>.parquet` per batch in the kind's folder."""
    for i, (run_id, batch) in enumerate(batches):
        store.storage.write_table(join_uri(store.folder(kind), f"{run_id}-{i:032x}.parquet"), batch)


def test_an_old_store_is_refused_until_migrated_and_migrate_is_idempotent(store, capsys):
    write_old_shards(store, "labels", [("r1", labels(range(10), grade=2)), ("r2", labels(range(5, 15), grade=0))])
    with pytest.raises(OldStoreFormat, match="rae-ray store migrate --store"):
        store.table("labels").open()
    with pytest.raises(OldStoreFormat):
        publish_shard(labels([99]), store.folder("labels"), store.storage, "new")
    assert main(["store", "migrate", "--store", store.uri]) == 0
    printed = capsys.readouterr().out
    assert "labels: 2 shards, 20 records read, 20 added" in printed
    assert store.table("labels").old_shards() == []
    found = lookup(store, [key(i) for i in range(16)])
    assert found.filter(pl.col("stored_grade").is_not_null()).height == 15
    # Each key has one record: that of the earlier shard where both had it (r1 before r2 by file time, then name).
    assert set(found.filter(pl.col("label_key").is_in([key(i) for i in range(5)]))["stored_grade"]) == {2}
    assert set(found.filter(pl.col("label_key").is_in([key(i) for i in range(10, 15)]))["stored_grade"]) == {0}
    # Again: nothing left to migrate; shards written again (an old writer) add only keys not held.
    assert main(["store", "migrate", "--store", store.uri]) == 0
    assert "labels: nothing to migrate" in capsys.readouterr().out
    write_old_shards(store, "labels", [("r3", labels(range(12, 20), grade=1))])
    assert maintenance.migrate(store)[0]["records_added"] == 5
    assert pl.read_delta(store.folder("labels")).height == 25
