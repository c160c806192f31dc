"""The run's context before anything is read: shuffles sized from the log's Parquet metadata."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from rae_ray.config import config_from_dict
from rae_ray.job import open_job
from rae_ray.runtime import ROWS_PER_PARTITION


def config_for(tmp_path, rows: int, **compute):
    log = tmp_path / f"log-{rows}.parquet"
    pq.write_table(pa.table({
        "query": pa.array(["q"] * rows), "ranker": pa.array(["a"] * rows), "rank": pa.array(range(rows), pa.int64()),
        "product_id": pa.array(["p"] * rows), "title": pa.array(["t"] * rows),
    }), log)
    return config_from_dict({
        "input": {"log": str(log)}, "output": {"uri": str(tmp_path / "out")},
        "llm": {"endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1", "api_key_required": False}},
                "guidelines": {"model": "g"}, "annotate": {"model": "a"}},
        "compute": {"shuffle": "hash", **compute},
    })


def test_the_first_shuffle_is_sized_by_the_logs_rows(tmp_path):
    # The first group-by (duplicates, over the whole log) runs before any count exists: its partitions come
    # from the row count in the Parquet footers, one per ROWS_PER_PARTITION rows, at most shuffle_partitions.
    rows = 2 * ROWS_PER_PARTITION + 1
    job, inputs = open_job(config_for(tmp_path, rows, shuffle_partitions=64), check_endpoints=False)
    assert inputs.log_rows == rows and job.parts == 3
    job, _ = open_job(config_for(tmp_path, rows, shuffle_partitions=2), check_endpoints=False)
    assert job.parts == 2
    job, _ = open_job(config_for(tmp_path, 10), check_endpoints=False)
    assert job.parts == 1
