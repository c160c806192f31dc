"""The whole job against a real OpenAI-compatible server (llama.cpp, SmolLM2-135M-Instruct), in text mode."""

from __future__ import annotations

import json

import polars as pl
import pytest

from rae_ray.config import config_from_dict
from rae_ray.job import run
from tests.helpers import read_output

pytestmark = pytest.mark.integration

# 3 queries at k=5 over the 3 rankers: 16 unique (query, product) pairs of the sample.
QUERIES = ["camera bag", "cd player", "earbuds"]


def slice_log(chorus, path, queries=QUERIES):
    log = pl.read_parquet(chorus / "search_log.parquet").filter(pl.col("query").is_in(queries))
    log.write_parquet(path)
    return log


def real_config(llama, out, log_path, **overrides) -> dict:
    config = {
        "run_id": "real",
        "input": {"log": str(log_path), "catalog": "sample:products.parquet"},
        "k": 5,
        "llm": {
            "endpoints": {"default": {"base_url": llama.base_url, "api_key_env": "RAE_TEST_UNSET_KEY",
                                      "api_key_required": False, "timeout_s": 300, "backoff_base_s": 0.1,
                                      # a 135M model loops inside free text until max_tokens without them
                                      "length_limits": True}},
            "guidelines": {"model": llama.alias, "max_output_tokens": 600},
            "annotate": {"model": llama.alias, "max_output_tokens": 300},
        },
        "compute": {"shuffle_partitions": 2,
                    "guidelines": {"max_actors": 1, "max_concurrent_requests": 2},
                    "annotate": {"max_actors": 1, "max_concurrent_requests": 4}},
        "metrics": {"ks": [5], "bootstrap": 100},
        "output": {"uri": str(out)},
    }
    config.update(overrides)
    return config


def test_job_on_real_server_accounts_for_every_pair(ray_local, llama, chorus, tmp_path):
    log = slice_log(chorus, tmp_path / "log.parquet")
    before = llama.metrics()

    result = run(config_from_dict(real_config(llama, tmp_path / "out", tmp_path / "log.parquet")))

    root = tmp_path / "out" / "real"
    expected = log.filter(pl.col("rank") <= 5).select("query", "product_id").unique()
    labels = read_output(root, "labels")
    # Nothing lost: one row per unique pair; a pair without a grade is in errors/ with its reason.
    assert labels.height == expected.height == result.manifest["pairs_unique"]
    assert labels.join(expected, on=["query", "product_id"], how="anti").is_empty()
    ungraded = labels.filter(pl.col("grade").is_null())
    assert ungraded["error"].null_count() == 0
    errors = read_output(root, "errors").filter(pl.col("stage") == "annotate")
    assert errors.height == ungraded.height
    assert errors["reason"].null_count() == 0
    assert set(labels["grade"].drop_nulls().to_list()) <= {0, 1, 2}
    assert result.manifest["labelled"] == labels.height - ungraded.height

    # Tokens come from the server's own usage (its tokenizer): the manifest's prompt tokens, less the cached
    # ones, are the prompt tokens the server says it processed; the prompt cache reused shared prefixes.
    after = llama.metrics()
    manifest = result.manifest
    prompt = sum(stage["prompt"] for stage in manifest["tokens"].values())
    cached = sum(stage["cached"] for stage in manifest["tokens"].values())
    completion = sum(stage["completion"] for stage in manifest["tokens"].values())
    served = {name: after[f"llamacpp:{name}"] - before[f"llamacpp:{name}"]
              for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "tokens_predicted_total")}
    assert cached > 0
    assert cached == served["prompt_tokens_cached_total"]
    assert prompt - cached == served["prompt_tokens_total"]
    assert completion == served["tokens_predicted_total"]
    guidelines = read_output(root, "guidelines")
    assert guidelines.height == len(QUERIES)
    assert all(json.loads(g)["grade_definitions"] for g in guidelines["guideline"].drop_nulls())
