"""Trust benchmark: confidence from repeated judgments and the review loop, on the bundled chorus sample.

Starts the simulated endpoint with per-sample noise on (`--judge-noise`, default 0.3) and a private local Ray,
then, all runs sharing one label store:
  1. judges every pair 3 times (`llm.annotate.samples: 3`): the share of pairs below confidence 1, and agreement
     with people (the chorus final rating on the run's 0-2 scale) of the more confident half of the labels
     against the less confident half (labels ranked by confidence, ties broken by a hash of the pair);
  2. raises samples to 5: the run must send exactly 2 x pairs new votes (checked in the manifest and at the
     simulated endpoint);
  3. fills the human grade of the 5-sample run's review queue's first 50 rows that have a known human grade
     (least confident first) and imports the file with `rae-ray review import`;
  4. raises samples to 6: the run must send one new vote for every pair except those 50 (0 calls for them), and
     label exactly those 50 `source: human` with the imported grades.
Exits non-zero when any of that does not hold. Figures are printed last (one JSON object, then the checks).

    python benchmarks/trust.py [--judge-noise 0.3] [--queries N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import polars as pl  # noqa: E402

from rae_ray.cli import main as cli_main  # noqa: E402
from rae_ray.config import config_from_dict  # noqa: E402
from rae_ray.io import sample_dir  # noqa: E402
from rae_ray.sim.process import SimProcess  # noqa: E402

GRADE_MAP = {3: 2, 2: 1, 1: 1, 0: 0}  # chorus ratings (0-3) on the run's default 0-2 scale
CORRECTIONS = 50
K = 10


def run_config(sim_url: str, out: Path, log: str, run_id: str, samples: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "k": K,
        "input": {"log": log, "catalog": "sample:products.parquet",
                  "human_labels": {"uri": "sample:judgments.parquet", "column": "final_rating",
                                   "grade_map": GRADE_MAP}},
        "llm": {"endpoints": {"default": {"base_url": sim_url, "api_key_env": "RAE_SIM_API_KEY",
                                          "api_key_required": False}},
                "guidelines": {"model": "sim-judge"},
                "annotate": {"model": "sim-judge", "temperature": 0.7, "samples": samples}},
        "compute": {"shuffle_partitions": 4},
        "metrics": {"bootstrap": 200},
        "output": {"uri": str(out)},
    }


def labels_of(out: Path, run_id: str) -> pl.DataFrame:
    return pl.read_parquet(out / run_id / "labels" / "*.parquet")


def people() -> pl.DataFrame:
    """The chorus final rating of every judged pair, on the run's scale."""
    ratings = pl.read_parquet(sample_dir() / "judgments.parquet")
    return ratings.select("query", "product_id", pl.col("final_rating").replace_strict(GRADE_MAP)
                          .cast(pl.Int64).alias("people_grade"))


def halves(labels: pl.DataFrame) -> dict[str, Any]:
    """Exact agreement with people of the more and the less confident half of the graded, human-judged labels."""
    judged = (labels.filter(pl.col("grade").is_not_null())
              .join(people(), on=["query", "product_id"], how="inner")
              .with_columns(pl.concat_str("query", "product_id").hash(seed=7).alias("_tie"))
              .sort(["confidence", "_tie"], descending=[True, False]))
    half = judged.height // 2
    figures = {"pairs_judged_by_people": judged.height}
    for name, part in (("high", judged.head(half)), ("low", judged.tail(judged.height - half))):
        figures[f"{name}_half_pairs"] = part.height
        figures[f"{name}_half_mean_confidence"] = round(part["confidence"].mean(), 4)
        figures[f"{name}_half_exact_agreement"] = round((part["grade"].cast(pl.Int64) == part["people_grade"]).mean(), 4)
    unanimous = judged.filter(pl.col("confidence") == 1)
    split = judged.filter(pl.col("confidence") < 1)
    for name, part in (("unanimous", unanimous), ("split", split)):
        figures[f"{name}_pairs"] = part.height
        figures[f"{name}_exact_agreement"] = (
            round((part["grade"].cast(pl.Int64) == part["people_grade"]).mean(), 4) if part.height else None)
    return figures


def fill_review(out: Path, run_id: str, path: Path) -> pl.DataFrame:
    """The run's review queue with the first CORRECTIONS rows that have a known human grade filled in (the people's
    grade, signed); every other row left blank. Returns the filled rows."""
    queue = pl.read_csv(out / run_id / "review" / "queue.csv", infer_schema=False)
    chosen = queue.filter(pl.col("known_human_grade").is_not_null()).head(CORRECTIONS)
    mine = pl.col("_chosen").fill_null(False)
    filled = (queue.join(chosen.select("query", "product_id", pl.lit(True).alias("_chosen")),
                         on=["query", "product_id"], how="left", maintain_order="left")
              .with_columns(pl.when(mine).then(pl.col("known_human_grade")).alias("human_grade"),
                            pl.when(mine).then(pl.lit("trust-benchmark")).alias("reviewer"),
                            pl.when(mine).then(pl.lit("2026-12-01")).alias("reviewed_at"))
              .drop("_chosen"))
    filled.write_csv(path)
    return chosen.select("query", "product_id", pl.col("known_human_grade").cast(pl.Int64).alias("imported_grade"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judge-noise", type=float, default=0.3)
    parser.add_argument("--queries", type=int, default=0, help="first N queries of the sample only (0: all)")
    parser.add_argument("--keep", action="store_true", help="keep the output folder and print where it is")
    args = parser.parse_args()

    import ray

    from rae_ray.job import run

    work = Path(tempfile.mkdtemp(prefix="rae-trust-"))
    out = work / "out"
    log = pl.read_parquet(sample_dir() / "search_log.parquet")
    if args.queries:
        log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:args.queries]))
    log.write_parquet(work / "log.parquet")
    pairs = log.filter(pl.col("rank") <= K).select("query", "product_id").unique().height
    figures: dict[str, Any] = {"judge_noise": args.judge_noise, "queries": log["query"].n_unique(),
                               "unique_pairs": pairs}

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        with SimProcess(judge_noise=args.judge_noise) as sim:
            def judged(run_id: str, samples: int) -> tuple[dict[str, Any], int]:
                sim.reset_stats()
                started = time.monotonic()
                manifest = run(config_from_dict(run_config(sim.base_url, out, str(work / "log.parquet"),
                                                           run_id, samples))).manifest
                figures[f"{run_id}_seconds"] = round(time.monotonic() - started, 1)
                figures[f"{run_id}_llm_calls"] = manifest["llm_calls"]
                figures[f"{run_id}_endpoint_requests"] = sim.stats()["requests_total"]
                return manifest, sim.stats()["requests_total"]

            three, _ = judged("samples-3", 3)
            labels = labels_of(out, "samples-3")
            figures["samples_3_pairs_below_confidence_1"] = labels.filter(pl.col("confidence") < 1).height
            figures["samples_3_share_below_confidence_1"] = round(
                figures["samples_3_pairs_below_confidence_1"] / labels["confidence"].count(), 4)
            figures["samples_3_vote_agreement"] = three.get("confidence", {}).get("agreement", {}).get("exact")
            figures.update({f"samples_3_{k}": v for k, v in halves(labels).items()})

            five, five_requests = judged("samples-5", 5)
            filled = fill_review(out, "samples-5", work / "reviewed.csv")
            figures["corrections"] = filled.height
            code = cli_main(["review", "import", str(work / "reviewed.csv"), "--store", str(out / "_store")])
            figures["review_import_exit_code"] = code

            six, six_requests = judged("samples-6-after-review", 6)
            after = labels_of(out, "samples-6-after-review")
            by_people = after.filter(pl.col("source") == "human").select(
                "query", "product_id", pl.col("grade").cast(pl.Int64).alias("label_grade"), "llm_calls")
            figures["after_review_human_labels_manifest"] = six.get("human_labels")
            figures["after_review_human_labels_in_labels"] = by_people.height
            matched = filled.join(by_people, on=["query", "product_id"], how="inner")
            figures["after_review_human_labels_matching_import"] = matched.filter(
                pl.col("label_grade") == pl.col("imported_grade")).height
            figures["after_review_llm_calls_for_human_pairs"] = int(by_people["llm_calls"].sum() or 0)
    finally:
        ray.shutdown()

    checks = {
        "3 samples: every pair judged 3 times": three["llm_calls"]["annotate"] == 3 * pairs,
        "3 samples: some pairs below confidence 1": figures["samples_3_pairs_below_confidence_1"] > 0,
        "3 samples: the more confident half agrees more with people":
            figures["samples_3_high_half_exact_agreement"] > figures["samples_3_low_half_exact_agreement"],
        "5 samples: exactly 2 x pairs new votes (manifest)": five["llm_calls"] == {"guidelines": 0, "annotate": 2 * pairs},
        "5 samples: exactly 2 x pairs requests at the endpoint": five_requests == 2 * pairs,
        f"review import of {CORRECTIONS} corrections exits 0": figures["corrections"] == CORRECTIONS and code == 0,
        "after review: no call for the corrected pairs (one new vote for every other pair)":
            six["llm_calls"] == {"guidelines": 0, "annotate": pairs - CORRECTIONS} and six_requests == pairs - CORRECTIONS,
        "after review: the corrected pairs are labelled by people, with the imported grades":
            figures["after_review_human_labels_manifest"] == CORRECTIONS
            and figures["after_review_human_labels_in_labels"] == CORRECTIONS
            and figures["after_review_human_labels_matching_import"] == CORRECTIONS
            and figures["after_review_llm_calls_for_human_pairs"] == 0,
    }
    if args.keep:
        figures["output"] = str(out)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
