"""Votes (llm.annotate.samples, panel): store keys per vote, majority with ties to the lower grade, confidence."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from rae_ray.config import AnnotateModelConfig, config_from_dict
from rae_ray.labelstore.cached import LABEL_SPEC
from rae_ray.labelstore.keys import add_label_keys, label_key, vote_key
from rae_ray.llm.protocol import request_body
from rae_ray.stages.votes import (
    aggregate_votes, confidence_counts, explode_votes, vote_agreement, vote_confusions, vote_model,
)

SCALE = [{"grade": 2, "name": "highly_relevant", "description": "a"}, {"grade": 1, "name": "acceptable_substitute",
         "description": "b"}, {"grade": 0, "name": "irrelevant", "description": "c"}]
NAMES = {2: "highly_relevant", 1: "acceptable_substitute", 0: "irrelevant"}


def pairs(n: int = 2) -> pa.Table:
    return pa.table({"query": [f"q{i}" for i in range(n)], "product_id": [f"p{i}" for i in range(n)],
                     "product_hash": [f"h{i}" for i in range(n)], "guideline_id": [f"g{i}" for i in range(n)]})


def votes_of(grades_by_pair: dict[str, list[tuple[str, int, int | None]]], hits: bool = False) -> pa.Table:
    """Vote rows as the annotate stage hands them back: (model, sample, grade or None: failed) per pair."""
    rows = []
    models = sorted({m for votes in grades_by_pair.values() for m, _, _ in votes})
    for pair, votes in grades_by_pair.items():
        for model, sample, grade in votes:
            rows.append({
                "query": pair, "product_id": "p-" + pair, "product_hash": "h", "label_key": f"{pair}-{model}-{sample}",
                "grade": grade, "label": NAMES.get(grade), "reasoning": f"{model} sample {sample}", "model": model,
                "prompt_version": "v", "guideline_id": "g", "caption_id": None, "image_id": None,
                "image_status": "none", "cache_hit": hits, "error": None if grade is not None else "HTTP 500",
                "llm_calls": 0 if hits else 1, "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0,
                "seconds": 0.1, "pair_key": f"{pair}-key", "vote_judge": models.index(model), "vote_sample": sample,
            })
    return pa.Table.from_pylist(rows)


def test_sample_zero_keeps_the_label_key_and_other_samples_differ():
    key = label_key("g", "h", "m", "v", SCALE)
    assert vote_key(key, 0) == key
    others = {vote_key(key, s) for s in range(1, 5)}
    assert len(others) == 4 and key not in others
    assert vote_key(key, 2) == vote_key(key, 2)  # the same sample finds its stored vote again


def test_explode_votes_keys_each_judge_and_sample():
    batch = pairs(2)
    votes = pl.from_arrow(explode_votes(batch, ["m", "n"], 3, "v", SCALE, "text"))
    assert votes.height == 2 * 2 * 3
    assert votes["label_key"].n_unique() == votes.height  # every vote its own store record
    today = add_label_keys(batch, "m", "v", SCALE, "text").column("label_key").to_pylist()
    first = votes.filter((pl.col("vote_judge") == 0) & (pl.col("vote_sample") == 0)).sort("query")
    assert first["label_key"].to_list() == today  # a store from before votes still answers sample 0
    # The panel member's sample 0 is the key a run with that judge alone would store.
    alone = add_label_keys(batch, "n", "v", SCALE, "text").column("label_key").to_pylist()
    second = votes.filter((pl.col("vote_judge") == 1) & (pl.col("vote_sample") == 0)).sort("query")
    assert second["label_key"].to_list() == alone
    assert votes.group_by("query").agg(pl.col("pair_key").n_unique())["pair_key"].to_list() == [1, 1]
    assert set(votes["pair_key"].to_list()) == set(today)


def test_majority_wins_and_a_tie_goes_to_the_lower_grade():
    table = votes_of({
        "majority": [("m", 0, 2), ("m", 1, 1), ("m", 2, 2)],
        "tie": [("m", 0, 2), ("m", 1, 1), ("m", 2, 2), ("m", 3, 1)],
        "three_way": [("m", 0, 2), ("m", 1, 0), ("m", 2, 1)],
        "unanimous": [("m", 0, 0), ("m", 1, 0), ("m", 2, 0)],
    })
    labels = pl.from_arrow(aggregate_votes(table, LABEL_SPEC.output)).sort("query")
    by_pair = {row["query"]: row for row in labels.iter_rows(named=True)}
    assert (by_pair["majority"]["grade"], by_pair["majority"]["confidence"]) == (2, pytest.approx(2 / 3))
    assert (by_pair["tie"]["grade"], by_pair["tie"]["confidence"]) == (1, pytest.approx(2 / 4))
    assert (by_pair["three_way"]["grade"], by_pair["three_way"]["confidence"]) == (0, pytest.approx(1 / 3))
    assert (by_pair["unanimous"]["grade"], by_pair["unanimous"]["confidence"]) == (0, 1.0)
    assert by_pair["tie"]["label"] == "acceptable_substitute"
    # The reasoning is the first vote (by judge, then sample) for the winning grade; the key the pair's own.
    assert by_pair["tie"]["reasoning"] == "m sample 1"
    assert by_pair["tie"]["label_key"] == "tie-key"
    assert by_pair["tie"]["llm_calls"] == 4 and by_pair["tie"]["prompt_tokens"] == 40
    assert [v["sample"] for v in by_pair["tie"]["votes"]] == [0, 1, 2, 3]
    assert [v["grade"] for v in by_pair["tie"]["votes"]] == [2, 1, 2, 1]
    assert labels["votes_failed"].to_list() == [0, 0, 0, 0]
    assert labels.columns == [*LABEL_SPEC.output, "confidence", "votes_failed", "votes"]


def test_failed_votes_count_only_when_all_failed():
    table = votes_of({
        "some_failed": [("m", 0, None), ("m", 1, 1), ("m", 2, None)],
        "all_failed": [("m", 0, None), ("m", 1, None)],
    })
    labels = {r["query"]: r for r in pl.from_arrow(aggregate_votes(table, LABEL_SPEC.output)).iter_rows(named=True)}
    partial = labels["some_failed"]
    assert (partial["grade"], partial["confidence"], partial["votes_failed"], partial["error"]) == (1, 1.0, 2, None)
    assert [v["grade"] for v in partial["votes"]] == [None, 1, None]
    failed = labels["all_failed"]
    assert (failed["grade"], failed["confidence"], failed["votes_failed"]) == (None, None, 2)
    assert failed["error"] == "HTTP 500"


def test_panel_votes_and_cache_hit_only_when_every_vote_was_stored():
    table = votes_of({"pair": [("a", 0, 1), ("b", 0, 2), ("a", 1, 2)]})
    label = pl.from_arrow(aggregate_votes(table, LABEL_SPEC.output)).row(0, named=True)
    # Grade 2 wins (2 of 3); its first vote by judge, then sample, is judge a's sample 1.
    assert (label["grade"], label["model"], label["reasoning"]) == (2, "a", "a sample 1")
    assert label["confidence"] == pytest.approx(2 / 3)
    assert label["cache_hit"] is False
    stored = pl.from_arrow(aggregate_votes(votes_of({"pair": [("a", 0, 1)]}, hits=True), LABEL_SPEC.output))
    assert stored["cache_hit"].to_list() == [True] and stored["llm_calls"].to_list() == [0]


def test_confidence_histogram_and_agreement():
    table = votes_of({
        "p1": [("m", 0, 2), ("m", 1, 2), ("n", 0, 2), ("n", 1, 2)],
        "p2": [("m", 0, 0), ("m", 1, 1), ("n", 0, 0), ("n", 1, 0)],
        "p3": [("m", 0, 1), ("m", 1, 1), ("n", 0, 0), ("n", 1, 2)],
    })
    labels = aggregate_votes(table, LABEL_SPEC.output)
    counts = pl.from_arrow(confidence_counts(labels))
    assert counts["pairs"].sum() == 3
    assert counts.filter(pl.col("bin") == 9)["pairs"].item() == 1  # p1: 1.0
    assert counts.filter(pl.col("bin") == 7)["pairs"].item() == 1  # p2: 0.75
    assert counts.filter(pl.col("bin") == 5)["pairs"].item() == 1  # p3: 0.5 (1 twice, ties go lower: 1 vs 0/2 once)
    confusions = pl.from_arrow(vote_confusions(labels))
    assert confusions["n"].sum() == 3 * 6  # 4 slots: 6 slot pairs, each over 3 pairs
    result = vote_agreement(confusions, [0, 1, 2])
    grades = {"m#0": [2, 0, 1], "m#1": [2, 1, 1], "n#0": [2, 0, 0], "n#1": [2, 0, 2]}
    slots = sorted(grades)
    pairs_of = [(a, b) for i, a in enumerate(slots) for b in slots[i + 1:]]
    exact = [sum(x == y for x, y in zip(grades[a], grades[b])) / 3 for a, b in pairs_of]
    assert result["slot_pairs"] == 6
    assert result["exact"] == pytest.approx(sum(exact) / 6, abs=1e-4)
    same = [e for (a, b), e in zip(pairs_of, exact) if a[0] == b[0]]
    assert result["between_samples"]["exact"] == pytest.approx(sum(same) / 2, abs=1e-4)
    assert result["between_judges"]["slot_pairs"] == 4


def test_samples_need_a_temperature_and_sample_i_sends_seed_i():
    with pytest.raises(ValueError, match="temperature"):
        AnnotateModelConfig(model="m", samples=3)
    AnnotateModelConfig(model="m", samples=3, reasoning=True)  # reasoning models sample at their own temperature
    model = AnnotateModelConfig(model="m", samples=3, temperature=0.7)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert "seed" not in request_body([{"role": "user", "content": "x"}], vote_model(model, 0), fmt)
    assert request_body([{"role": "user", "content": "x"}], vote_model(model, 2), fmt)["seed"] == 2
    with pytest.raises(ValueError, match="own model name"):
        AnnotateModelConfig(model="m", panel=["m"])


def test_panel_members_need_known_endpoints():
    base = {"input": {"log": "x"}, "llm": {"endpoints": {"default": {"base_url": "http://h/v1"}},
                                            "guidelines": {"model": "g"},
                                            "annotate": {"model": "a", "panel": ["b", {"model": "c", "endpoint": "e"}]}}}
    with pytest.raises(ValueError, match="endpoint 'e'"):
        config_from_dict(base)
    base["llm"]["endpoints"]["e"] = {"base_url": "http://other/v1"}
    config = config_from_dict(base)
    assert config.llm.annotate.judges == [("a", "default"), ("b", "default"), ("c", "e")]
    assert config.llm.annotate.votes_per_pair == 3


def test_review_queue_lists_the_least_confident_first_and_keeps_its_columns():
    from rae_ray.evaluation.review import REVIEW_SCHEMA, review_queue
    from rae_ray.evaluation.sources import conform_labels, least_confident

    labels = pl.from_arrow(aggregate_votes(votes_of({
        "sure": [("m", 0, 1), ("m", 1, 1), ("m", 2, 1)],
        "split": [("m", 0, 2), ("m", 1, 1), ("m", 2, 0)],
        "lean": [("m", 0, 2), ("m", 1, 2), ("m", 2, 0)],
        "failed": [("m", 0, None), ("m", 1, None), ("m", 2, None)],
    }), LABEL_SPEC.output))
    failed = conform_labels(labels.filter(pl.col("error").is_not_null()))
    finding = conform_labels(labels.filter(pl.col("query") == "sure"))  # a middle grade behind a finding
    queue = review_queue(agreement=None, failed=failed, finding_labels=finding,
                         uncertain=conform_labels(least_confident(labels, 10)))
    assert list(queue.columns) == list(REVIEW_SCHEMA)
    assert queue["query"].to_list() == ["split", "lean", "failed", "sure"]
    assert queue["review_reason"].to_list() == ["low_confidence", "low_confidence", "stage_error", "boundary"]
    assert queue["confidence"].to_list()[:2] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert queue["votes"][0] == "m#0=2 m#1=1 m#2=0"
    assert queue["votes"][2] == "m#0=failed m#1=failed m#2=failed"
    # Without votes the queue is as before: no confidence, the old order.
    plain = review_queue(agreement=None, failed=failed.drop("confidence", "votes"),
                         finding_labels=finding.drop("confidence", "votes"))
    assert plain["review_reason"].to_list() == ["stage_error", "boundary"]
    assert plain["confidence"].null_count() == 2
