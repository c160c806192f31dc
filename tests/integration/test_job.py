"""The whole job on a real local Ray against the simulated endpoint over HTTP."""

from __future__ import annotations

import json

import ir_measures
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rae_ray.cli import main
from rae_ray.config import config_from_dict
from rae_ray.llm.client import FatalEndpointError
from rae_ray.job import run
from tests.helpers import base_config, read_output, stored_records

pytestmark = pytest.mark.integration


def test_chorus_end_to_end(ray_local, sim, chorus, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(base_config(sim.base_url, tmp_path / "out")))
    sim.reset_stats()

    assert main(["run", "--config", str(config_path)]) == 0

    printed = capsys.readouterr().out
    for ranker in ("random-v0", "bm25-v1", "tuned-v2"):
        assert ranker in printed
    root = tmp_path / "out" / "run"
    log = pl.read_parquet(chorus / "search_log.parquet")
    expected_pairs = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique()

    labels = read_output(root, "labels")
    assert labels.height == expected_pairs.height
    assert labels.select("query", "product_id").n_unique() == labels.height
    assert labels.join(expected_pairs, on=["query", "product_id"], how="anti").is_empty()
    assert labels["grade"].null_count() == 0 and set(labels["grade"].unique()) <= {0, 1, 2}
    assert labels["reasoning"].str.starts_with("[simulated judge]").all()
    assert set(labels["label"].unique()) <= {"highly_relevant", "acceptable_substitute", "irrelevant"}

    guidelines = read_output(root, "guidelines")
    assert guidelines.height == log["query"].n_unique() == guidelines["query"].n_unique()
    assert guidelines["error"].null_count() == guidelines.height
    first = json.loads(guidelines["guideline"][0])
    assert first["requirements"] and {d["grade"] for d in first["grade_definitions"]} == {0, 1, 2}

    manifest = json.loads((root / "manifest.json").read_text())
    stats = sim.stats()
    assert manifest["pairs_in_log"] == log.height
    assert manifest["pairs_unique"] == labels.height
    assert manifest["queries"] == guidelines.height
    assert manifest["llm_calls"] == {"guidelines": guidelines.height, "annotate": labels.height}
    assert stats["requests_total"] == guidelines.height + labels.height
    assert manifest["errors"] == {"input": 0, "guidelines": 0, "annotate": 0}
    assert manifest["tokens"]["annotate"]["prompt"] == labels["prompt_tokens"].sum() > 0
    assert manifest["tokens"]["annotate"]["cached"] > 0
    assert manifest["cost_usd"]["total"] is None  # no price table in this config
    assert manifest["status"] == "succeeded"

    rankers = pl.read_parquet(root / "metrics" / "rankers.parquet")
    assert set(rankers["ranker"]) == {"random-v0", "bm25-v1", "tuned-v2"}
    assert set(rankers["k"]) == {5, 10}
    assert {"ndcg", "precision", "share_irrelevant", "mean_grade"} <= set(rankers["metric"])
    assert (rankers["n_queries"] == 135).all()
    assert ((rankers["ci_low"] <= rankers["value"]) & (rankers["value"] <= rankers["ci_high"])).all()
    queries = pl.read_parquet(root / "metrics" / "queries.parquet")
    assert queries.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10)).height == 3 * 135

    # TREC files, written from Ray a block at a time: every labelled pair and every listed product, and
    # ir_measures computes our figures from them.
    qrels = list(ir_measures.read_trec_qrels(str(root / "trec" / "qrels.txt")))
    assert len(qrels) == labels.height == len({(q.query_id, q.doc_id) for q in qrels})
    top10 = rankers.filter(pl.col("k") == 10)
    for ranker in ("random-v0", "bm25-v1", "tuned-v2"):
        run_lines = list(ir_measures.read_trec_run(str(root / "trec" / f"{ranker}.run")))
        assert len(run_lines) == log.filter((pl.col("ranker") == ranker) & (pl.col("rank") <= 10)).height
        theirs = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.P @ 10], qrels, run_lines)
        ours = {m: top10.filter(ranker=ranker, metric=m)["value"][0] for m in ("ndcg", "precision")}
        assert ours["ndcg"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-12)
        assert ours["precision"] == pytest.approx(theirs[ir_measures.P @ 10], abs=1e-12)


def test_bad_rows_and_failed_calls_are_accounted_for(ray_local, tmp_path):
    """Bad log rows, unknown products and endpoint failures all end in errors/, each with a reason."""
    from rae_ray.sim.process import SimProcess

    log = pa.table({
        "query": ["red mug", "red mug", "red mug", None, "blue cup", "blue cup", "blue cup"],
        "ranker": ["a", "a", "b", "a", "a", "a", "b"],
        "rank": [1, 2, 1, 1, 1, 0, 2],
        "product_id": ["m1", "m2", "m1", "m1", "c1", "c2", "ghost"],
    })
    catalog = pa.table({
        "product_id": ["m1", "m2", "c1", "c2"],
        "title": ["Red mug", "Tea mug", "Blue cup", "Cup"],
        "brand": ["Acme", "Acme", "Acme", "Acme"],
    })
    pq.write_table(log, tmp_path / "log.parquet")
    pq.write_table(catalog, tmp_path / "catalog.parquet")
    with SimProcess(latency_ms=1, error_rate_5xx=0.5, seed=7) as faulty:
        config = base_config(faulty.base_url, tmp_path / "out")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
        config["llm"]["endpoints"]["default"]["max_retries"] = 0
        result = run(config_from_dict(config))
        stats = faulty.stats()

    root = tmp_path / "out" / "run"
    labels = read_output(root, "labels")
    errors = read_output(root, "errors")
    manifest = result.manifest
    # 5 valid rows -> unique pairs (red mug, m1), (red mug, m2), (blue cup, c1), (blue cup, ghost)
    assert labels.height == manifest["pairs_unique"] == 4
    input_errors = errors.filter(pl.col("stage") == "input")
    assert sorted(input_errors["reason"].to_list()) == ["null query", "rank below 1"]
    ghost = labels.filter(pl.col("product_id") == "ghost")
    assert ghost["error"].to_list() == ["unknown product_id: not in the catalog"] and ghost["llm_calls"].to_list() == [0]
    # Every pair is labelled or carries its reason, also in errors/.
    failed = labels.filter(pl.col("grade").is_null())
    assert (failed["error"].is_not_null()).all()
    assert labels.filter(pl.col("grade").is_not_null())["error"].null_count() == labels["grade"].is_not_null().sum()
    assert errors.filter(pl.col("stage") == "annotate").height == failed.height
    assert manifest["labelled"] + failed.height == manifest["pairs_unique"]
    assert manifest["llm_calls"]["guidelines"] + manifest["llm_calls"]["annotate"] == stats["requests_total"]
    assert stats["injected_errors"].get("5xx", 0) > 0


def test_unreachable_endpoint_fails_before_any_output(ray_local, tmp_path):
    config = config_from_dict(base_config("http://127.0.0.1:9/v1", tmp_path / "out"))
    with pytest.raises(FatalEndpointError, match="unreachable"):
        run(config)
    assert not (tmp_path / "out").exists()


def test_missing_column_fails_before_any_call(ray_local, sim, tmp_path, capsys):
    pq.write_table(pa.table({"query": ["q"], "rank": [1], "product_id": ["p"]}), tmp_path / "log.parquet")
    config = base_config(sim.base_url, tmp_path / "out")
    config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": "sample:products.parquet"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    before = sim.stats()["requests_total"]
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "log.parquet" in err and "ranker" in err
    assert sim.stats()["requests_total"] == before


def test_demo_command(ray_local, tmp_path, capsys):
    """`rae-ray demo --out DIR`: starts its own simulated endpoint, runs the bundled sample, prints the table."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--latency-ms", "2"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "SIMULATED" in printed
    # What a person reads: the job's own lines, not Ray Data's execution plans and summaries (in its log file).
    assert "[rae-ray] guidelines:" in captured.err
    ray_data = [line for line in captured.err.splitlines()
                if "INFO" in line or "Execution plan" in line or "Progress bars disabled" in line]
    assert ray_data == [], ray_data[:5]
    table = printed[printed.index("ranker"):]
    assert all(r in table for r in ("random-v0", "bm25-v1", "tuned-v2"))
    assert f"output: {out}" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cost_usd"]["total"] > 0
    assert read_output(out, "labels").height == manifest["pairs_unique"] == manifest["llm_calls"]["annotate"]


def test_annotation_through_the_batch_api(ray_local, chorus, tmp_path):
    """llm.annotate.batch: the judgements go through /v1/files + /v1/batches, not one online call each; labels,
    store and manifest are the same as online; the cost is the batch share of the price; a rerun sends nothing."""
    from rae_ray.sim.process import SimProcess

    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:8]
    log.filter(pl.col("query").is_in(queries)).write_parquet(tmp_path / "log.parquet")
    pairs = log.filter(pl.col("query").is_in(queries) & (pl.col("rank") <= 10)).select("query", "product_id").unique()
    with SimProcess(latency_ms=5) as sim:
        config = base_config(sim.base_url, tmp_path / "out", run_id="batched")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": "sample:products.parquet"}
        config["llm"]["annotate"].update(batch=True, batch_poll_s=0.2)
        config["compute"]["annotate"] = {"batch_size": 64, "max_actors": 2}
        config["pricing"] = {"sim-judge": {"input_per_1m": 1.0, "cached_input_per_1m": 0.5, "output_per_1m": 2.0}}
        manifest = run(config_from_dict(config)).manifest
        online, batches = sim.stats(), sim._call("GET", "/stats/batches")
        again = run(config_from_dict({**config, "run_id": "batched-again"})).manifest
        after = sim._call("GET", "/stats/batches")
    root = tmp_path / "out" / "batched"
    labels = read_output(root, "labels")
    assert labels.height == labels.select("query", "product_id").n_unique() == pairs.height
    assert labels["grade"].null_count() == 0 and labels["reasoning"].str.starts_with("[simulated judge]").all()
    # Online: only the guidelines; the judgements came through batches of at most 64 requests.
    assert online["by_schema"].get("relevance_judgement", 0) == 0
    assert online["requests_total"] == len(queries)
    assert batches["batch_requests"] == pairs.height
    assert batches["batches_created"] == batches["batches_completed"] >= -(-pairs.height // 64)
    assert manifest["llm_calls"] == {"guidelines": len(queries), "annotate": pairs.height}
    tokens = manifest["tokens"]["annotate"]
    full = ((tokens["prompt"] - tokens["cached"]) * 1.0 + tokens["cached"] * 0.5 + tokens["completion"] * 2.0) / 1e6
    assert tokens["prompt"] > 0 and manifest["cost_usd"]["annotate"] == pytest.approx(0.5 * full, rel=1e-3)
    assert stored_records(tmp_path / "out" / "_store" / "labels").height == pairs.height
    assert again["llm_calls"] == {"guidelines": 0, "annotate": 0} and after["batches_created"] == batches["batches_created"]


def test_batch_mode_stops_at_the_cost_limit(ray_local, sim, chorus, tmp_path):
    """llm.annotate.batch with max_cost_usd: each provider batch asks the run's budget first; once the judgements'
    cost (at the batch price) reaches the limit no batch is submitted, the run ends stopped_at_cost_limit and the
    pairs not sent are in errors/ saying so. Sent judgements are bounded as online: the limit, plus the batches
    already granted when it was reached (one actor, one batch at a time here: one batch)."""
    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:4]
    log.filter(pl.col("query").is_in(queries)).write_parquet(tmp_path / "log.parquet")
    pairs = log.filter(pl.col("query").is_in(queries) & (pl.col("rank") <= 10)).select("query", "product_id").unique()
    batch_size, max_cost_usd = 16, 8.0
    config = base_config(sim.base_url, tmp_path / "out", run_id="batched-capped", max_cost_usd=max_cost_usd)
    config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": "sample:products.parquet"}
    config["llm"]["guidelines"] = {"model": "sim-guide"}  # no price: only the judgements cost
    config["llm"]["annotate"].update(batch=True, batch_poll_s=0.1)
    config["compute"]["annotate"] = {"batch_size": batch_size, "max_actors": 1, "max_concurrent_batches": 1}
    config["pricing"] = {"sim-judge": {"input_per_1m": 1000.0, "cached_input_per_1m": 1000.0, "output_per_1m": 1000.0}}
    before = sim._call("GET", "/stats/batches")
    result = run(config_from_dict(config))
    after = sim._call("GET", "/stats/batches")
    manifest = result.manifest
    sent, cost = manifest["llm_calls"]["annotate"], manifest["cost_usd"]["annotate"]
    assert manifest["status"] == "stopped_at_cost_limit"
    assert 0 < sent < pairs.height and after["batch_requests"] - before.get("batch_requests", 0) == sent
    assert cost >= max_cost_usd and sent <= max_cost_usd / (cost / sent) + batch_size
    errors = read_output(tmp_path / "out" / "batched-capped", "errors").filter(pl.col("stage") == "annotate")
    assert errors.height == pairs.height - sent == manifest["errors"]["annotate"]
    assert errors["reason"].str.starts_with(f"not sent: max_cost_usd {max_cost_usd:g} reached (spent ").all()
    labels = read_output(tmp_path / "out" / "batched-capped", "labels")
    assert labels.filter(pl.col("grade").is_not_null()).height == sent
