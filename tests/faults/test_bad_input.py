"""Bad input (issue 6, point 3): each case fails early with a message naming the file and column (or config key),
or is handled: the bad row is reported in errors/ with its reason, never silently dropped, never sent twice."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rae_ray.cli import main
from rae_ray.config import ConfigError, EndpointConfig, ScaleConfig, StageModelConfig, config_from_dict
from rae_ray.inputs import LOG_OPTIONAL, LOG_REQUIRED, inspect_catalog, inspect_input
from rae_ray.io import InputError, Storage
from rae_ray.metrics.evaluate import query_metrics
from rae_ray.metrics.trec import query_id
from rae_ray.sim.judge import make_guideline
from rae_ray.sim.process import SimThread
from rae_ray.stages.annotate import MAX_FIELD_CHARS, AnnotateStage, product_for_prompt
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.prepare import (
    MAX_QUERY_CHARS, check_log_rows, invalid_rows, mark_duplicate_rows, normalize_products, select_rows, unique_pairs,
)
from tests.faults.conftest import read_folder
from tests.helpers import base_config

LOG = {"query": ["red mug"], "ranker": ["a"], "rank": [1], "product_id": ["m1"]}
MEGABYTE_TITLE = "Red mug " + "very " * 210_000  # ~1 MB
SCALE = ScaleConfig().as_dicts()


def write(folder: Path, name: str, table: pa.Table | dict) -> str:
    path = folder / name
    pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), path)
    return str(path)


def inspect_log_file(path: str):
    return inspect_input(path, Storage(), "search log", LOG_REQUIRED, LOG_OPTIONAL)


def raw_strings(values: list[bytes | None]) -> pa.Array:
    """A string column holding exactly these bytes, valid UTF-8 or not (pyarrow does not check a view)."""
    return pa.array(values, pa.binary()).view(pa.string())


# -- files and columns: fail before any row is read, naming file and column ------------------------------------


def test_missing_columns_name_the_file_and_the_columns(tmp_path):
    path = write(tmp_path, "log.parquet", {"query": ["q"], "rank": [1]})
    with pytest.raises(InputError, match=r"search log file .*log\.parquet: missing required column\(s\) ranker, product_id"):
        inspect_log_file(path)
    catalog = write(tmp_path, "catalog.parquet", {"product_id": ["p"], "name": ["no title column"]})
    with pytest.raises(InputError, match=r"product catalog file .*catalog\.parquet: missing required column\(s\) title"):
        inspect_catalog(catalog, Storage())


def test_extra_columns_are_ignored(tmp_path):
    path = write(tmp_path, "log.parquet", {**LOG, "session_id": ["s1"], "clicked": [True]})
    assert inspect_log_file(path).columns == ["query", "ranker", "rank", "product_id"]


@pytest.mark.parametrize("column, values, shown", [
    ("rank", ["first"], "string"),
    ("rank", [1.0], "double"),
    ("query", [42], "int64"),
    ("product_id", [1234], "int64"),
    ("query_count", ["many"], "string"),
])
def test_wrong_types_name_the_column_and_both_types(tmp_path, column, values, shown):
    path = write(tmp_path, "log.parquet", {**LOG, column: values})
    expected = "integer" if column in ("rank", "query_count") else "string"
    with pytest.raises(InputError, match=rf"log\.parquet: column '{column}' has type {shown}, expected {expected}"):
        inspect_log_file(path)


def test_binary_text_is_a_type_error_naming_the_column(tmp_path):
    """Text written as bytes (e.g. undecodable strings saved as binary) is refused, naming the column."""
    table = pa.table({"product_id": ["p"], "title": pa.array([b"caf\xe9 au lait"], pa.binary())})
    path = write(tmp_path, "catalog.parquet", table)
    with pytest.raises(InputError, match=r"catalog\.parquet: column 'title' has type binary, expected string"):
        inspect_catalog(path, Storage())


def test_all_null_columns(tmp_path):
    """An optional column that is all null (type null, as pandas writes it) is treated as absent; a required one fails."""
    path = write(tmp_path, "log.parquet", {**LOG, "locale": pa.nulls(1)})
    assert "locale" not in inspect_log_file(path).columns
    path = write(tmp_path, "nulls.parquet", {**LOG, "query": pa.nulls(1)})
    with pytest.raises(InputError, match=r"column 'query' has type null \(every value is null\), expected string"):
        inspect_log_file(path)


def test_empty_corrupt_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "zero.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"zero\.parquet: the file is empty \(0 bytes\)"):
        inspect_log_file(str(tmp_path / "zero.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    with pytest.raises(InputError, match=r"junk\.parquet: not a readable Parquet file"):
        inspect_log_file(str(tmp_path / "junk.parquet"))
    whole = Path(write(tmp_path, "whole.parquet", LOG)).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut\.parquet: not a readable Parquet file"):
        inspect_log_file(str(tmp_path / "cut.parquet"))
    # In a folder, the one bad file is named.
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder, "a.parquet", LOG)
    (folder / "b.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"b\.parquet: the file is empty"):
        inspect_log_file(str(folder))


def test_a_file_with_no_rows(tmp_path):
    empty = {k: pa.array([], pa.int64() if k == "rank" else pa.string()) for k in LOG}
    with pytest.raises(InputError, match="no rows"):
        inspect_log_file(write(tmp_path, "empty.parquet", empty))


# -- rows: reported with a reason, never silently dropped -------------------------------------------------------


def test_bad_rows_each_get_their_reason():
    batch = pa.table({
        "query": raw_strings([b"mug", None, b"", b"   ", b"m\xffg", b"q" * (MAX_QUERY_CHARS + 1), b"mug", b"mug",
                              b"mug", b"mug", b"mug"]),
        "ranker": ["a", "a", "a", "a", "a", "a", None, " ", "a", "a", "a"],
        "rank": pa.array([1, 1, 1, 1, 1, 1, 1, 1, None, 0, 2], pa.int64()),
        "product_id": raw_strings([b"p", b"p", b"p", b"p", b"p", b"p", b"p", b"p", b"p", b"p", b"\xc3("]),
    })
    checked = check_log_rows(batch)
    assert checked.column("input_error").to_pylist() == [
        None, "null query", "empty query", "empty query", "invalid UTF-8 in query",
        f"query longer than {MAX_QUERY_CHARS} characters", "null ranker", "empty ranker", "null rank", "rank below 1",
        "invalid UTF-8 in product_id",
    ]
    # The invalid bytes are replaced, so the rows can be written to errors/ (and polars does not crash on them).
    assert checked.column("query").to_pylist()[4] == "m\ufffdg"
    errors = invalid_rows(checked)
    assert errors.num_rows == 10 and set(errors.column("stage").to_pylist()) == {"input"}
    assert select_rows(checked, None, 10, None).num_rows == 1


def test_invalid_utf8_in_product_text_is_replaced_not_fatal():
    catalog = pa.table({"product_id": ["p1", "p2"], "title": raw_strings([b"Caf\xe9 mug", b"Tea mug"])})
    normalized = normalize_products(catalog, mark_catalog=True)
    assert normalized.column("title").to_pylist() == ["Caf\ufffd mug", "Tea mug"]
    normalized.validate(full=True)


def test_duplicate_log_rows_are_reported_and_not_counted_twice():
    log = pa.table({
        "query": ["mug"] * 5,
        "ranker": ["a", "a", "a", "a", "b"],
        "rank": pa.array([1, 1, 2, 3, 1], pa.int64()),
        "product_id": ["good", "good", "bad", "good", "good"],  # row 2 repeats row 1; row 4 lists `good` again
    })
    labels = pl.DataFrame({"query": ["mug", "mug"], "product_id": ["good", "bad"], "grade": [2, 0]})

    def ndcg(run: pa.Table) -> dict[str, float]:
        scores = query_metrics(pl.from_arrow(run), labels, ks=[5], metrics=["ndcg"])
        return dict(zip(scores["ranker"], scores["value"]))

    # Without the check, the duplicated relevant product pushes nDCG above 1.
    assert ndcg(select_rows(check_log_rows(log), None, 10, None))["a"] > 1
    marked = mark_duplicate_rows(check_log_rows(log))
    reasons = marked.column("input_error").to_pylist()
    assert reasons == [None, "duplicate: the ranker lists this product already at rank 1", None,
                       "duplicate: the ranker lists this product already at rank 1", None]
    assert ndcg(select_rows(marked, None, 10, None)) == {"a": 1.0, "b": 1.0}
    assert invalid_rows(marked).num_rows == 2
    # One pair per (query, product) whatever the duplicates.
    assert unique_pairs(select_rows(check_log_rows(log), None, 10, None)).num_rows == 2


def test_gaps_in_rank_are_kept_and_scored_by_position():
    gappy = pl.DataFrame({"ranker": ["a"] * 3, "query": ["q"] * 3, "rank": [1, 4, 9], "product_id": ["x", "y", "z"]})
    dense = gappy.with_columns(pl.Series("rank", [1, 2, 3]))
    labels = pl.DataFrame({"query": ["q"] * 3, "product_id": ["x", "y", "z"], "grade": [0, 2, 1]})
    assert query_metrics(gappy, labels, ks=[5]).equals(query_metrics(dense, labels, ks=[5]))
    pairs = unique_pairs(select_rows(check_log_rows(gappy.to_arrow()), None, 10, None))
    assert sorted(pairs.column("best_rank").to_pylist()) == [1, 4, 9]


def test_catalog_with_duplicate_ids_gives_one_pair_and_the_same_product_every_time():
    rows = pl.DataFrame({
        "query": ["mug"] * 3, "ranker": ["a", "a", "b"], "rank": [1, 1, 2], "product_id": ["dup", "dup", "dup"],
        "title": ["Red mug", "Blue mug", "Red mug"],  # the catalog lists `dup` twice; the join gave each log row both
    })
    first = unique_pairs(rows.to_arrow()).to_pylist()
    again = unique_pairs(rows.reverse().to_arrow()).to_pylist()
    assert len(first) == 1 and first == again  # the same record, whatever the order rows arrive in
    assert first[0]["product_variants"] == 2 and first[0]["n_rankers"] == 2


def test_a_megabyte_title_does_not_make_a_megabyte_request():
    row = {"title": MEGABYTE_TITLE, "description": "d" * 100_000, "attributes": json.dumps({"k": "v" * 50_000})}
    product = product_for_prompt(row)
    assert {k: len(v) if isinstance(v, str) else v for k, v in product.items()} == {
        "title": MAX_FIELD_CHARS["title"], "description": MAX_FIELD_CHARS["description"],
        "attributes": MAX_FIELD_CHARS["attributes"]}
    with SimThread(record_requests=4) as sim:
        config = LLMStageConfig(
            endpoint=EndpointConfig(base_url=sim.base_url, api_key_required=False),
            model=StageModelConfig(model="sim-judge"), scale=SCALE)
        stage = AnnotateStage(config)
        batch = pa.Table.from_pylist([{
            "query": "red mug", "product_id": "p", "product_hash": "h", "pair_error": None, "guideline_id": "g",
            "guideline": json.dumps(make_guideline("red mug", SCALE)), "guideline_error": None, **row}])

        async def go():
            try:
                return await stage(batch)
            finally:
                await stage.client.close()

        labels = asyncio.run(go())
        with urllib.request.urlopen(sim.root_url + "/debug/requests", timeout=10) as response:
            sizes = [r["bytes"] for r in json.loads(response.read())["requests"]]
        assert sim.stats()["request_bytes_max"] == max(sizes)
    assert labels.column("error").to_pylist() == [None] and len(sizes) == 1 and sizes[0] < 16_000


# -- config and endpoint: fail before spending, exit code 2 ----------------------------------------------------

MINIMAL = {"input": {"log": "sample:search_log.parquet"},
           "llm": {"endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1"}},
                   "guidelines": {"model": "g"}, "annotate": {"model": "a"}}}


@pytest.mark.parametrize("overrides, where", [
    (["colour=red"], "colour: Extra inputs are not permitted"),
    (["compute.annotate.max_actor=4"], "compute.annotate.max_actor: Extra inputs are not permitted"),
    (["llm.endpoints.default.timeout=5"], "llm.endpoints.default.timeout: Extra inputs are not permitted"),
    (["k=0"], "k: Input should be greater than or equal to 1"),
    (["k=ten"], "k: Input should be a valid integer"),
    (["images.mode=pictures"], "images.mode: Input should be 'text', 'caption' or 'direct'"),
    (["llm.endpoints.default.timeout_s=-1"], "llm.endpoints.default.timeout_s: Input should be greater than 0"),
    (["llm.endpoints.default.max_retries=1000"], "llm.endpoints.default.max_retries: Input should be less than"),
    (["compute.annotate.min_actors=4", "compute.annotate.max_actors=2"], "max_actors must be >= min_actors"),
    (["llm.endpoints.default.base_url=api.openai.com/v1"], "base_url must be an http:// or https:// URL"),
    (["run_id=a/b"], "run_id must be a non-empty name without '/'"),
])
def test_config_unknown_keys_and_bad_values_name_the_key(overrides, where):
    with pytest.raises(ConfigError) as raised:
        config_from_dict(MINIMAL, overrides)
    assert where in str(raised.value)


def test_bad_config_and_unreachable_endpoint_exit_2_before_any_output(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    config = base_config("http://127.0.0.1:9/v1", tmp_path / "out")
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--set", "llm.annotate.temprature=0.5"]) == 2
    assert "llm.annotate.temprature: Extra inputs are not permitted" in capsys.readouterr().err
    started = time.monotonic()
    assert main(["run", "--config", str(path)]) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "endpoint http://127.0.0.1:9/v1 is unreachable" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- the whole job on a log and catalog holding all of it at once -----------------------------------------------


@pytest.fixture(scope="module")
def bad_input_run(ray_local, sim, chorus, tmp_path_factory):
    """A few chorus queries plus every kind of bad row, a catalog with a duplicated id and a 1 MB title."""
    folder = tmp_path_factory.mktemp("bad-input")
    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:3]
    good = log.filter(pl.col("query").is_in(queries) & (pl.col("rank") <= 10)).select(
        "query", "ranker", pl.col("rank").cast(pl.Int64), "product_id")
    catalog = pl.read_parquet(chorus / "products.parquet").select("product_id", "title", "brand", "description")
    first = good.row(0, named=True)
    extra = pl.DataFrame([
        {"query": None, "ranker": "a", "rank": 1, "product_id": "m1"},
        {"query": "  ", "ranker": "a", "rank": 1, "product_id": "m1"},
        {"query": "q" * (MAX_QUERY_CHARS + 1), "ranker": "a", "rank": 1, "product_id": "m1"},
        {"query": "red mug", "ranker": "a", "rank": 1, "product_id": ""},
        {"query": "red mug", "ranker": None, "rank": 1, "product_id": "m1"},
        {"query": "red mug", "ranker": "", "rank": 1, "product_id": "m1"},
        {"query": "red mug", "ranker": "a", "rank": 0, "product_id": "m1"},
        {"query": "red mug", "ranker": "a", "rank": None, "product_id": "m1"},
        {"query": "red mug", "ranker": "a", "rank": 1, "product_id": "m1"},
        {"query": "red mug", "ranker": "a", "rank": 3, "product_id": "huge"},  # a gap in rank: 1, 3, 8
        {"query": "red mug", "ranker": "a", "rank": 8, "product_id": "ghost"},  # unknown product
        {"query": "red mug", "ranker": "b", "rank": 1, "product_id": "dup"},  # duplicated in the catalog
        {"query": "red mug", "ranker": "b", "rank": 2, "product_id": "m1"},
        {"query": "red mug", "ranker": "b", "rank": 3, "product_id": "m 2"},  # a space: TREC files split on them
        {**first},  # an exact duplicate of a valid row
        {**first, "rank": 9},  # the same product again, lower in the same ranker's list
        {"query": "BAD-UTF8", "ranker": "a", "rank": 1, "product_id": "m1"},
    ], schema=good.schema)
    rows = pl.concat([good, extra]).with_columns(pl.lit("s-1").alias("session_id"))  # an extra column
    table = rows.to_arrow()
    queries_raw = [q.encode() if q != "BAD-UTF8" else b"red \xffmug" for q in rows["query"].fill_null("\0").to_list()]
    queries_raw = [None if q == b"\0" else q for q in queries_raw]
    table = table.set_column(0, "query", raw_strings(queries_raw))
    pq.write_table(table, folder / "log.parquet")
    more = pl.DataFrame([
        {"product_id": "m1", "title": "Red mug", "brand": "Acme", "description": "A red ceramic mug"},
        {"product_id": "huge", "title": MEGABYTE_TITLE, "brand": "Acme", "description": None},
        {"product_id": "dup", "title": "Red mug, large", "brand": "Acme", "description": None},
        {"product_id": "dup", "title": "Blue cup", "brand": "Other", "description": None},
        {"product_id": "m 2", "title": "Red mug with lid", "brand": "Acme", "description": None},
    ])
    pl.concat([catalog, more]).write_parquet(folder / "catalog.parquet")

    config = base_config(sim.base_url, folder / "out", run_id="bad-input")
    config["compute"]["shuffle_partitions"] = 2
    config["input"] = {"log": str(folder / "log.parquet"), "catalog": str(folder / "catalog.parquet")}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    sim.reset_stats()
    assert main(["run", "--config", str(path)]) == 0
    root = folder / "out" / "bad-input"
    return {"root": root, "good": good, "stats": sim.stats(), "manifest": json.loads((root / "manifest.json").read_text())}


def test_job_reports_every_bad_row_and_labels_each_pair_once(bad_input_run):
    root, manifest = bad_input_run["root"], bad_input_run["manifest"]
    labels, errors = read_folder(root / "labels"), read_folder(root / "errors")
    all_input_reasons = errors.filter(pl.col("stage") == "input")["reason"].to_list()
    input_reasons = sorted(r for r in all_input_reasons if not r.startswith("duplicate:"))  # see the test below
    assert input_reasons == sorted(["null query", "empty query", f"query longer than {MAX_QUERY_CHARS} characters",
                                    "empty product_id", "null ranker", "empty ranker", "rank below 1", "null rank",
                                    "invalid UTF-8 in query"])
    expected = pl.concat([bad_input_run["good"].select("query", "product_id"), pl.DataFrame(
        {"query": ["red mug"] * 5, "product_id": ["m1", "huge", "ghost", "dup", "m 2"]})]).unique()
    assert labels.height == labels.select("query", "product_id").n_unique() == expected.height == manifest["pairs_unique"]
    assert labels.join(expected, on=["query", "product_id"], how="anti").is_empty()
    by_product = {r["product_id"]: r for r in labels.filter(pl.col("query") == "red mug").iter_rows(named=True)}
    assert by_product["ghost"]["error"] == "unknown product_id: not in the catalog" and by_product["ghost"]["llm_calls"] == 0
    assert by_product["huge"]["grade"] is not None and by_product["dup"]["grade"] is not None
    assert manifest["labelled"] + manifest["errors"]["annotate"] == manifest["pairs_unique"]
    assert manifest["errors"]["input"] == len(all_input_reasons) and manifest["pairs_in_log"] == bad_input_run["good"].height + 17
    assert manifest["pairs_with_conflicting_catalog_records"] == 1  # (red mug, dup): the catalog lists dup twice


def test_job_never_sends_the_megabyte_title(bad_input_run):
    stats = bad_input_run["stats"]
    assert stats["requests_total"] > 0 and stats["request_bytes_max"] < 20_000
    sizes = {p.name: p.stat().st_size for p in bad_input_run["root"].rglob("*") if p.is_file()}
    assert max(sizes.values()) < 1_000_000, sizes  # nor copies it into an output (report, review queue, labels)


def test_job_reports_duplicate_log_rows_and_keeps_ndcg_at_most_one(bad_input_run):
    root = bad_input_run["root"]
    errors = read_folder(root / "errors")
    assert errors.filter(pl.col("reason").str.starts_with("duplicate:")).height == 2
    queries = pl.read_parquet(root / "metrics" / "queries.parquet")
    assert queries.filter(pl.col("metric") == "ndcg")["value"].max() <= 1.0 + 1e-9


def test_job_trec_files_hold_a_product_id_with_a_space(bad_input_run):
    """"m 2" is percent-encoded the same way in qrels and run, so TREC tools read one line per pair."""
    trec = bad_input_run["root"] / "trec"
    qrels = [line.split() for line in (trec / "qrels.txt").read_text().splitlines()]
    run_b = [line.split() for line in (trec / "b.run").read_text().splitlines()]
    assert all(len(line) == 4 for line in qrels) and all(len(line) == 6 for line in run_b)
    assert [line[0] for line in qrels if line[2] == "m%202"] == [query_id("red mug")]
    assert [line[:3] for line in run_b if line[2] == "m%202"] == [[query_id("red mug"), "Q0", "m%202"]]
