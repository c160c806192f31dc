"""The writers of an evaluation: TREC files, and every table through Storage on S3 (moto's server)."""

from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from rae_ray.io import RunLayout, Storage
from rae_ray.outputs import safe_name, write_evaluation
from rae_ray.report import write_report

from .conftest import SMALL_MANIFEST, WRITTEN, evaluate_small, run_small, small_log


def test_evaluate_writes_nothing_the_writer_writes_what_it_returned(tmp_path):
    result, source = evaluate_small()
    assert result.files == {} and result.root == "" and not any(tmp_path.iterdir())
    written = write_evaluation(result, source, Storage(), RunLayout(str(tmp_path)))
    assert result.files == {}  # the writer returns a new result, it does not change its input
    assert written.root == str(tmp_path) and sorted(written.files) == sorted([*WRITTEN, "trec/README.txt"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(written.files)
    assert_frame_equal(pl.read_parquet(Path(written.files["metrics/comparisons.parquet"])), result.comparisons)
    assert_frame_equal(pl.read_parquet(Path(written.files["agreement/hard_disagreements.parquet"])),
                       result.agreement.hard_disagreements)


def test_trec_files(small_result):
    qrels = open(small_result.files["trec/qrels.txt"]).read().splitlines()
    assert len(qrels) == 7  # t2 has no grade
    relevance = {line.split()[2]: int(line.split()[3]) for line in qrels}
    assert relevance == {"p1": 3, "p2": 1, "p3": 0, "p4": 0, "t1": 3, "x1": 1, "x2": 0}  # 2**g - 1
    run = open(small_result.files["trec/new.run"]).read().splitlines()
    assert len(run) == small_log().filter(ranker="new").height
    assert safe_name("bm25 v1/β") == "bm25_v1__"


def test_writes_to_s3(s3_server, s3_bucket, tmp_path):
    import boto3

    storage = Storage(endpoint_url=s3_server)
    root = f"s3://{s3_bucket}/run"
    result = run_small(root, storage=storage)
    uri = write_report(result, SMALL_MANIFEST, storage, RunLayout(root))
    assert uri == root + "/report.html"
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]}
    for name in WRITTEN + ["report.html"]:
        assert f"run/{name}" in keys, name
