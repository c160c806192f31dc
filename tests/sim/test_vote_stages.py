"""The annotate stage on vote rows against the simulated endpoint (no Ray): sample i sends seed i, votes keep
their judge, sample and store key, a panel's judges answer in one actor."""

from __future__ import annotations

import asyncio
import json

import polars as pl
import pyarrow as pa

from rae_ray.config import PAPER_SCALE, AnnotateModelConfig, EndpointConfig
from rae_ray.labelstore.cached import LABEL_SPEC, KeyedStage
from rae_ray.sim.judge import make_guideline
from rae_ray.stages.annotate import AnnotateStage
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.panel import PanelStage
from rae_ray.stages.votes import aggregate_votes, explode_votes
from rae_ray.steps.judge import VOTE_SPEC

SCALE = [g.model_dump() for g in PAPER_SCALE]
QUERY = "bluetooth speaker"


def pairs() -> pa.Table:
    titles = ["JBL Go 3 portable Bluetooth speaker", "Bluetooth speaker stand", "Sony headphones", "Speaker cable"]
    n = len(titles)
    return pa.table({"query": [QUERY] * n, "product_id": [f"p{i}" for i in range(n)],
                     "product_hash": [f"h{i}" for i in range(n)], "pair_error": [None] * n,
                     "guideline_id": ["g"] * n, "guideline": [json.dumps(make_guideline(QUERY))] * n,
                     "guideline_error": [None] * n, "title": titles})


def stage_config(sim, model: str) -> LLMStageConfig:
    return LLMStageConfig(endpoint=EndpointConfig(base_url=sim.base_url, api_key_required=False),
                          model=AnnotateModelConfig(model=model, samples=3, temperature=0.7), scale=SCALE)


def test_samples_send_their_seed_and_keep_their_keys(start_sim):
    sim = start_sim(judge_noise=0.3, record_requests=100)
    votes = explode_votes(pairs(), ["m"], 3, "v", SCALE, "text")
    stage = KeyedStage(AnnotateStage, "label_key", VOTE_SPEC.output, stage_config(sim, "m"), None,
                       VOTE_SPEC.unstored_columns)
    out = pl.from_arrow(asyncio.run(stage(votes)))
    assert out["label_key"].to_list() == votes.column("label_key").to_pylist()
    assert out["vote_sample"].to_list() == votes.column("vote_sample").to_pylist()
    assert out["error"].null_count() == out.height
    recorded = sim._call("GET", "/debug/requests")["requests"]
    seeds = sorted((r["body"].get("seed") or 0) for r in recorded)
    assert seeds == sorted(votes.column("vote_sample").to_pylist())  # sample 0 sends no seed, i sends i
    labels = pl.from_arrow(aggregate_votes(out.to_arrow(), LABEL_SPEC.output))
    assert labels.height == 4 and labels["votes"].list.len().to_list() == [3] * 4


def test_a_panel_answers_each_vote_with_its_judge(start_sim):
    sim = start_sim(judge_noise=0.3)
    votes = explode_votes(pairs(), ["m", "n"], 2, "v", SCALE, "text")
    stage = KeyedStage(PanelStage, "label_key", VOTE_SPEC.output, [stage_config(sim, "m"), stage_config(sim, "n")],
                       None, VOTE_SPEC.unstored_columns)
    out = pl.from_arrow(asyncio.run(stage(votes)))
    sent = pl.from_arrow(votes).select("label_key", "vote_judge", "vote_sample")
    both = out.join(sent, on="label_key", suffix="_sent")
    assert both.height == out.height == sent.height == 16
    assert (both["vote_judge"] == both["vote_judge_sent"]).all() and (both["vote_sample"] == both["vote_sample_sent"]).all()
    assert both.filter(pl.col("vote_judge") == 1)["model"].unique().to_list() == ["n"]
    assert sim.stats()["by_model"] == {"m": 8, "n": 8}


def test_batch_mode_sends_one_provider_batch_per_sample(start_sim, tmp_path):
    sim = start_sim(judge_noise=0.3, record_requests=0)
    config = LLMStageConfig(
        endpoint=EndpointConfig(base_url=sim.base_url, api_key_required=False),
        model=AnnotateModelConfig(model="m", samples=2, temperature=0.7, batch=True, batch_poll_s=0.05),
        scale=SCALE, batch_state_uri=str(tmp_path / "batches"))
    votes = explode_votes(pairs(), ["m"], 2, "v", SCALE, "text")
    stage = KeyedStage(AnnotateStage, "label_key", VOTE_SPEC.output, config, None, VOTE_SPEC.unstored_columns)
    out = pl.from_arrow(asyncio.run(stage(votes)))
    assert out["error"].null_count() == out.height == 8
    assert out["vote_sample"].to_list() == votes.column("vote_sample").to_pylist()
    stats = sim._call("GET", "/stats/batches")
    assert stats["batches_created"] == 2 and stats["batch_requests"] == 8
