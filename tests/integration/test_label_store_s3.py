"""The label store on S3 (moto): lookups through Ray, and two processes writing and looking up at once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import polars as pl
import pyarrow as pa
import pytest

from rae_ray.io import Storage
from rae_ray.labelstore.cached import LABEL_SPEC, STORED_PREFIX
from rae_ray.labelstore.delta import storage_options
from rae_ray.labelstore.store import LabelStore, publish_shard
from tests.helpers import stored_records

pytestmark = pytest.mark.integration

# One writer process: `batches` batches of 10 keys, the first 5 keys of every batch shared with the other writer
# (both store them, with different records), a lookup of everything written so far after each commit.
WRITER = textwrap.dedent("""
    import hashlib, sys
    import pyarrow as pa
    from rae_ray.io import Storage
    from rae_ray.labelstore.store import LabelStore, publish_shard

    store, name, batches = LabelStore(sys.argv[1], Storage()), sys.argv[2], int(sys.argv[3])
    grade = 1 if name == "a" else 2
    written = []
    for b in range(batches):
        ids = [f"shared-{b}-{i}" for i in range(5)] + [f"{name}-{b}-{i}" for i in range(5)]
        keys = [hashlib.sha256(i.encode()).hexdigest()[:32] for i in ids]
        publish_shard(pa.table({"label_key": keys, "grade": pa.array([grade] * 10, pa.int16()),
                                "label": [f"by {name}"] * 10, "reasoning": [f"{name} says {i}" for i in ids],
                                "model": ["judge"] * 10}),
                      store.folder("labels"), store.storage, f"run-{name}")
        written += keys
        found = store.records_for("labels", "label_key", written, columns=["label_key", "label"])
        assert found.num_rows == len(set(written)), (found.num_rows, len(set(written)))
        assert len(found.column("label_key").unique()) == found.num_rows
    print("ok", len(written))
""")


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def test_two_processes_write_one_s3_store_at_once(ray_local, s3_server, s3_bucket):
    store = LabelStore(f"s3://{s3_bucket}/_store", Storage())
    batches = 6
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, store.uri, name, str(batches)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in ("a", "b")]
    for writer in writers:
        output = writer.communicate(timeout=300)[0].decode()
        assert writer.returncode == 0 and output.strip().endswith(f"ok {batches * 10}"), output[-3000:]

    # Every record of both is there: 2 x 6 commits (the table's first version is 0).
    records = stored_records(store.folder("labels"), storage_options(store.storage, store.uri))
    assert records.height == 2 * batches * 10
    assert store.table("labels").open().version() == 2 * batches - 1
    shared = {key(f"shared-{b}-{i}") for b in range(batches) for i in range(5)}
    own = {key(f"{n}-{b}-{i}") for n in "ab" for b in range(batches) for i in range(5)}
    assert set(records["label_key"]) == shared | own

    # The job's lookup on Ray: one whole record per key, misses null.
    import ray

    wanted = sorted(shared | own) + [key("never stored")]
    looked = store.lookup(ray.data.from_arrow(pa.table({"label_key": wanted, "n": list(range(len(wanted)))})),
                          "labels", "label_key", LABEL_SPEC.stored, STORED_PREFIX, 4)
    found = pl.from_arrow(pa.concat_tables(ray.get(looked.to_arrow_refs())))
    assert found.height == len(wanted) and found["label_key"].n_unique() == len(wanted)
    hits = found.filter(pl.col("stored_grade").is_not_null())
    assert hits.height == len(shared | own)
    # Whole records: grade, label and reasoning all of the same writer.
    writer_of = {1: "a", 2: "b"}
    assert all(row["stored_label"] == f"by {writer_of[row['stored_grade']]}"
               and row["stored_reasoning"].startswith(writer_of[row["stored_grade"]] + " says")
               for row in hits.to_dicts())
    assert found.filter(pl.col("label_key") == key("never stored"))["stored_label"].to_list() == [None]

    # Compaction on S3 keeps one record per key and the same answers.
    from rae_ray.labelstore import maintenance

    result = maintenance.compact(store)[0]
    assert result["duplicates_removed"] == len(shared) and result["records_after"] == len(shared | own)
    again = pl.from_arrow(pa.concat_tables(ray.get(store.lookup(
        ray.data.from_arrow(pa.table({"label_key": wanted, "n": list(range(len(wanted)))})), "labels", "label_key",
        LABEL_SPEC.stored, STORED_PREFIX, 4).to_arrow_refs())))
    assert again.sort("label_key").equals(found.sort("label_key"))


def test_an_old_format_store_on_s3_asks_for_migrate(s3_server, s3_bucket):
    from rae_ray.cli import main
    from rae_ray.labelstore.delta import OldStoreFormat

    store = LabelStore(f"s3://{s3_bucket}/old", Storage())
    shard = pa.table({"label_key": [key("x"), key("y")], "grade": pa.array([2, 0], pa.int16()),
                      "label": ["a", "b"], "model": ["m", "m"]})
    store.storage.write_table(f"{store.folder('labels')}/run-{'0' * 32}.parquet", shard)
    with pytest.raises(OldStoreFormat, match="rae-ray store migrate"):
        store.table("labels").open()
    assert main(["store", "migrate", "--store", store.uri]) == 0
    assert sorted(store.records_for("labels", "label_key", [key("x"), key("y")]).column("grade").to_pylist()) == [0, 2]
    other = f"s3://{s3_bucket}/other/labels"
    store.storage.write_table(f"{other}/run-{'1' * 32}.parquet", shard)
    with pytest.raises(OldStoreFormat):  # publishing into a folder of the earlier format is refused too
        publish_shard(shard, other, store.storage, "r")
