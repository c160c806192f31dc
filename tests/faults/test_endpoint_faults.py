"""Endpoint faults (issue 6, point 1): every unique pair ends labelled or in errors/ with its reason, exactly once,
the manifest adds up, and a rerun sends exactly the pairs that failed and nothing else."""

from __future__ import annotations

import polars as pl
import pytest

from tests.faults.conftest import FAULTS, expected_pairs, read_folder

pytestmark = pytest.mark.integration

KEY = ["query", "product_id"]
KNOWN_REASONS = ("gave up after", "reply did not match the relevance_judgement schema", "no guideline for this query")


def outputs(root):
    return read_folder(root / "labels"), read_folder(root / "errors")


def test_every_pair_is_labelled_or_in_errors_once(faulted_runs):
    first = faulted_runs.first
    pairs = expected_pairs(faulted_runs.log)
    labels, errors = outputs(first.root)
    manifest = first.manifest

    # Each kind of fault really happened.
    injected = first.stats["injected_errors"]
    assert all(injected[kind.removeprefix("error_rate_")] > 0 for kind in FAULTS), injected

    # One row per unique pair: none lost, none duplicated, none invented.
    assert labels.height == pairs.height == manifest["pairs_unique"]
    assert labels.select(KEY).n_unique() == labels.height
    assert labels.join(pairs, on=KEY, how="anti").is_empty() and pairs.join(labels, on=KEY, how="anti").is_empty()

    # Labelled xor failed with a reason; the grade is on the scale.
    labelled = labels.filter(pl.col("grade").is_not_null())
    failed = labels.filter(pl.col("grade").is_null())
    assert labelled["error"].null_count() == labelled.height
    assert failed["error"].null_count() == 0 and failed.height > 0, "the faults should leave some pairs failed"
    assert set(labelled["grade"].unique()) <= {0, 1, 2}
    assert all(reason.startswith(KNOWN_REASONS) for reason in failed["error"]), failed["error"].unique().to_list()

    # errors/ holds exactly the failed pairs, once each, with the same reason.
    annotate_errors = errors.filter(pl.col("stage") == "annotate")
    assert annotate_errors.select(KEY).n_unique() == annotate_errors.height == failed.height
    joined = failed.join(annotate_errors, on=KEY, how="left", suffix="_errors")
    assert (joined["error"] == joined["reason"]).all()

    # The manifest adds up, and every request the endpoint saw is accounted for in the outputs.
    assert manifest["labelled"] + manifest["errors"]["annotate"] == manifest["pairs_unique"]
    assert manifest["labelled"] == labelled.height and manifest["errors"]["annotate"] == failed.height
    guidelines = read_folder(first.root / "guidelines")
    assert manifest["llm_calls"] == {"guidelines": guidelines["llm_calls"].sum(), "annotate": labels["llm_calls"].sum()}
    assert first.stats["requests_total"] == guidelines["llm_calls"].sum() + labels["llm_calls"].sum()
    # Retries happened (more calls than pairs), and they are bounded: 1 retry and 1 re-ask per pair at most.
    assert labels["llm_calls"].sum() > labelled.height
    assert labels["llm_calls"].max() <= 4


def test_rerun_sends_exactly_the_failed_pairs(faulted_runs):
    first, rerun = faulted_runs.first, faulted_runs.rerun
    labels_1, _ = outputs(first.root)
    labels_2, errors_2 = outputs(rerun.root)
    failed_1 = labels_1.filter(pl.col("grade").is_null()).select(KEY)
    labelled_1 = labels_1.filter(pl.col("grade").is_not_null())

    # The store answered every pair labelled before, and only those; the rest were looked up and missed.
    manifest = rerun.manifest
    assert manifest["run_id"] == "rerun" and manifest["label_store"] == first.manifest["label_store"]
    assert manifest["cache_hits"]["annotate"] == labelled_1.height
    hits = labels_2.filter(pl.col("cache_hit"))
    misses = labels_2.filter(~pl.col("cache_hit"))
    assert hits.select(KEY).sort(KEY).equals(labelled_1.select(KEY).sort(KEY))
    assert misses.select(KEY).sort(KEY).equals(failed_1.sort(KEY))
    assert hits["llm_calls"].sum() == 0
    # Labels from the store are the first run's labels.
    same = hits.join(labelled_1, on=KEY, suffix="_1")
    assert (same["grade"] == same["grade_1"]).all() and (same["reasoning"] == same["reasoning_1"]).all()

    # What reached the endpoint: the failed pairs (each with its own retries and re-asks), nothing else.
    sent = misses.filter(pl.col("llm_calls") > 0)
    not_sent = misses.filter(pl.col("llm_calls") == 0)
    assert sent.join(failed_1, on=KEY, how="anti").is_empty()
    assert not_sent["error"].str.starts_with("no guideline for this query").all()  # their query failed again
    judgements = rerun.stats["by_schema"].get("relevance_judgement", 0)
    assert judgements == sent["llm_calls"].sum() == manifest["llm_calls"]["annotate"]
    guidelines_2 = read_folder(rerun.root / "guidelines")
    failed_guidelines_1 = read_folder(first.root / "guidelines").filter(pl.col("error").is_not_null())
    assert guidelines_2.filter(~pl.col("cache_hit")).height == failed_guidelines_1.height
    assert rerun.stats["by_schema"].get("query_guideline", 0) == guidelines_2["llm_calls"].sum()

    # Same guarantees in the rerun: all pairs, once each, labelled or in errors/.
    assert labels_2.height == labels_2.select(KEY).n_unique() == manifest["pairs_unique"] == labels_1.height
    assert manifest["labelled"] + manifest["errors"]["annotate"] == manifest["pairs_unique"]
    assert errors_2.filter(pl.col("stage") == "annotate").height == labels_2["grade"].null_count()
    assert manifest["labelled"] > first.manifest["labelled"]
