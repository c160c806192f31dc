"""A sweep's variants side by side on one Ray: a variant waits for the stored results it shares with an earlier
one and runs beside it otherwise, and no query or pair is judged twice by the same judge."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pytest
import yaml

from rae_ray.cli import main
from tests.helpers import base_config, read_output

pytestmark = pytest.mark.integration


def span(root) -> tuple[datetime, datetime]:
    manifest = json.loads((root / "manifest.json").read_text())
    return datetime.fromisoformat(manifest["started_at"]), datetime.fromisoformat(manifest["finished_at"])


def test_variants_run_side_by_side_and_judge_each_pair_once(ray_local, sim, chorus, tmp_path, capsys):
    log = pl.read_parquet(chorus / "search_log.parquet")
    log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:6]))
    log.write_parquet(tmp_path / "log.parquet")
    config = base_config(sim.base_url, tmp_path / "out")
    config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": "sample:products.parquet"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "base": "base.yaml", "sweep_id": "par",
        "variants": {
            "a": {},
            "a-k5": {"k": 5},  # a's judge and guidelines: its pairs are keys a stores, so it waits for a
            "b": {"llm.annotate.model": "sim-judge-b"},  # a's guidelines, its own judge: judges beside a
        }}))
    pairs = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique().height

    sim.reset_stats()
    assert main(["sweep", "--sweep", str(tmp_path / "sweep.yaml")]) == 0
    captured = capsys.readouterr()
    # 2 CPUs, pools of 2 x 0.25 CPU, one CPU kept for tasks: two at a time.
    assert ("sweep par: 3 variants, up to 2 at a time (parallel: auto); a-k5 after a's guidelines and annotate "
            "(same guideline keys, same label keys); b after a's guidelines (same guideline keys)") in captured.err
    for name in ("a", "a-k5", "b"):
        assert f"[rae-ray] [{name}] annotate: " in captured.err  # every variant's lines carry its name

    out = tmp_path / "out"
    a, a_k5, b = span(out / "par-a"), span(out / "par-a-k5"), span(out / "par-b")
    assert a[0] < b[1] and b[0] < a[1], (a, b)  # a and b ran at the same time
    assert a_k5[0] >= a[1], (a, a_k5)  # a-k5 started once a was done

    # Each query and pair judged once per judge: a's calls, none for a-k5, b's judgements on a's guidelines.
    assert sim.stats()["by_model"] == {"sim-judge": 6 + pairs, "sim-judge-b": pairs}
    manifests = {n: json.loads((out / f"par-{n}" / "manifest.json").read_text()) for n in ("a", "a-k5", "b")}
    assert manifests["a"]["llm_calls"] == {"guidelines": 6, "annotate": pairs}
    assert manifests["a-k5"]["llm_calls"] == {"guidelines": 0, "annotate": 0}
    assert manifests["b"]["llm_calls"] == {"guidelines": 0, "annotate": pairs}  # started once a's were stored
    for name in ("a", "b"):
        labels = read_output(out / f"par-{name}", "labels")
        assert labels.height == pairs and labels["grade"].null_count() == 0

    # The sweep's tables as before: variants in file order.
    comparison = pl.read_parquet(out / "par" / "comparison.parquet")
    assert comparison["variant"].unique(maintain_order=True).to_list() == ["a", "a-k5", "b"]
    assert "ndcg@10" in captured.out
