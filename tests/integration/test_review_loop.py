"""The review loop and examples from people, end to end on the simulated endpoint: a filled review queue imported
into the label store takes those pairs away from the LLM; a sweep with and without examples holds the example
pairs out of agreement."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from rae_ray.cli import main
from rae_ray.config import config_from_dict
from rae_ray.job import run
from rae_ray.llm.prompts import ANNOTATION_PROMPT_VERSION, annotation_prompt_version
from rae_ray.sweep import load_sweep, run_sweep
from tests.helpers import base_config, read_output

pytestmark = pytest.mark.integration

HUMAN = {"uri": "sample:judgments.parquet", "column": "final_rating", "rater_columns": ["rater_1", "rater_2", "rater_3"],
         "grade_map": {3: 2, 2: 1, 1: 1, 0: 0}}
SWEEP_EXAMPLES = Path(__file__).parents[2] / "jobs" / "configs" / "sweep-examples.yaml"


def slice_log(chorus, tmp_path, n_queries: int) -> tuple[str, pl.DataFrame]:
    log = pl.read_parquet(chorus / "search_log.parquet")
    log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:n_queries]))
    log.write_parquet(tmp_path / "log.parquet")
    return str(tmp_path / "log.parquet"), log


def test_imported_review_grades_replace_the_llm(ray_local, sim, chorus, tmp_path, capsys):
    log_uri, log = slice_log(chorus, tmp_path, 6)
    config = base_config(sim.base_url, tmp_path / "out", k=4)
    config["input"] = {"log": log_uri, "catalog": "sample:products.parquet", "human_labels": HUMAN}
    pairs = log.filter(pl.col("rank") <= 4).select("query", "product_id").unique().height
    first = run(config_from_dict({**config, "run_id": "first"}))
    assert first.manifest["human_labels"] == 0

    queue = pl.read_csv(tmp_path / "out" / "first" / "review" / "queue.csv", infer_schema=False)
    assert {"query", "product_id", "product_hash", "scale", "human_grade", "note", "reviewer", "reviewed_at"} <= set(queue.columns)
    assert set(queue["scale"]) == {"2=highly_relevant;1=acceptable_substitute;0=irrelevant"}
    reviewed = queue.filter(pl.col("review_reason").is_in(["hard_disagreement", "disagreement"])).head(4)
    assert reviewed.height == 4, queue["review_reason"].value_counts()
    # People side with the crowd label on these, and sign; the other rows stay blank (not reviewed).
    mine = pl.col("_reviewed").fill_null(False)
    filled = queue.join(reviewed.select("query", "product_id", pl.lit(True).alias("_reviewed")),
                        on=["query", "product_id"], how="left", maintain_order="left").with_columns(
        pl.when(mine).then(pl.col("known_human_grade")).alias("human_grade"),
        pl.when(mine).then(pl.lit("ana")).alias("reviewer"),
        pl.when(mine).then(pl.lit("2026-11-30")).alias("reviewed_at"),
    ).drop("_reviewed")
    graded = filled.filter(pl.col("human_grade").is_not_null())
    assert graded.height == 4
    filled.write_csv(tmp_path / "filled.csv")
    store = tmp_path / "out" / "_store"
    assert main(["review", "import", str(tmp_path / "filled.csv"), "--store", str(store)]) == 0
    assert "imported 4 human grades" in capsys.readouterr().out

    # Another judge model: every pair is judged again, except those people graded.
    sim.reset_stats()
    second = run(config_from_dict({**config, "run_id": "second"}, ["llm.annotate.model=sim-judge-b"]))
    assert second.manifest["llm_calls"]["annotate"] == pairs - 4
    assert sim.stats()["requests_total"] == pairs - 4  # guidelines come from the store: no other call
    assert second.manifest["human_labels"] == 4
    labels = read_output(tmp_path / "out" / "second", "labels")
    assert labels.height == pairs and set(labels["source"]) == {"llm", "human"}
    by_people = labels.filter(pl.col("source") == "human").sort("query", "product_id")
    expected = graded.select("query", "product_id", pl.col("human_grade").cast(pl.Int64)).sort("query", "product_id")
    assert by_people.select("query", "product_id", pl.col("grade").cast(pl.Int64).alias("human_grade")).equals(expected)
    assert by_people["llm_calls"].sum() == 0 and by_people["model"].null_count() == 4
    assert labels.filter(pl.col("source") == "llm")["model"].unique().to_list() == ["sim-judge-b"]

    # Agreement: the people's own grades are not the judge's: left out, and counted.
    coverage = pl.read_parquet(tmp_path / "out" / "second" / "agreement" / "coverage.parquet")
    assert coverage["human_overridden"].to_list() == [4] and coverage["examples_held_out"].to_list() == [0]
    before = pl.read_parquet(tmp_path / "out" / "first" / "agreement" / "coverage.parquet")
    assert coverage["judged_pairs"][0] == before["judged_pairs"][0] - 4
    summary = pl.read_parquet(tmp_path / "out" / "second" / "agreement" / "summary.parquet")
    assert summary.filter(kind="judge_vs_human")["n"][0] == coverage["judged_pairs"][0]
    assert "graded by people in review" in (tmp_path / "out" / "second" / "report.html").read_text()
    # Not queued again.
    queue_again = pl.read_csv(tmp_path / "out" / "second" / "review" / "queue.csv", infer_schema=False)
    assert queue_again.join(graded.select("query", "product_id"), on=["query", "product_id"], how="semi").is_empty()

    # A pair reviewed again: the newest import wins; nothing is sent (every other label is in the store by now).
    changed = graded.head(1).with_columns(
        pl.when(pl.col("human_grade").cast(pl.Int64) == 2).then(0).otherwise(2).alias("human_grade"))
    changed.write_csv(tmp_path / "again.csv")
    assert main(["review", "import", str(tmp_path / "again.csv"), "--store", str(store)]) == 0
    third = run(config_from_dict({**config, "run_id": "third"}, ["llm.annotate.model=sim-judge-b"]))
    assert third.manifest["llm_calls"]["annotate"] == 0 and third.manifest["human_labels"] == 4
    relabelled = read_output(tmp_path / "out" / "third", "labels").join(
        changed.select("query", "product_id"), on=["query", "product_id"], how="semi")
    assert relabelled["grade"].to_list() == changed["human_grade"].to_list() and relabelled["source"][0] == "human"


def test_sweep_with_and_without_examples(ray_local, sim, chorus, tmp_path):
    log_uri, log = slice_log(chorus, tmp_path, 6)
    sweep_id, configs = load_sweep(SWEEP_EXAMPLES, [
        f"llm.endpoints.default.base_url={sim.base_url}", f"input.log={log_uri}", f"output.uri={tmp_path / 'out'}",
        "k=4", "metrics.bootstrap=100", "compute.shuffle_partitions=4"])
    assert list(configs) == ["no-examples", "examples"]
    result = run_sweep(sweep_id, configs)

    judges = pl.read_parquet(Path(result.root) / "judges.parquet").filter(kind="judge")
    assert judges["variant"].to_list() == ["no-examples", "examples"]
    plain, shown = judges.iter_rows(named=True)
    assert plain["examples_held_out"] == 0 and shown["examples_held_out"] > 0
    assert plain["human_overridden"] == shown["human_overridden"] == 0
    # The example pairs are not scored: the examples variant compares fewer pairs, exactly those fewer.
    assert shown["n_pairs"] == plain["n_pairs"] - shown["examples_held_out"]

    root = tmp_path / "out" / f"{sweep_id}-examples"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["example_pairs"] == shown["examples_held_out"]
    assert manifest["versions"]["prompts"]["annotate_examples"] == annotation_prompt_version(True, examples=True)
    labels = read_output(root, "labels")
    with_examples = labels.filter(pl.col("prompt_version") == annotation_prompt_version(True, examples=True))
    # Queries with examples were judged again under the examples prompt (a new label key); the others reused.
    assert with_examples.height > 0 and set(labels["prompt_version"]) <= {ANNOTATION_PROMPT_VERSION,
                                                                         annotation_prompt_version(True, examples=True)}
    assert manifest["llm_calls"]["annotate"] == with_examples.height
    assert manifest["cache_hits"]["annotate"] == labels.height - with_examples.height
    # At most per_query examples per query, from the pairs people graded.
    coverage = pl.read_parquet(root / "agreement" / "coverage.parquet")
    assert coverage["examples_held_out"][0] <= 3 * with_examples["query"].n_unique()
    assert yaml.safe_load(SWEEP_EXAMPLES.read_text())["variants"]["examples"]["llm.annotate.examples"]["per_query"] == 3
