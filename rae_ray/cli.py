"""`rae-ray` (also `python -m rae_ray`): demo, run, sim, metrics, estimate, sweep, store, review import."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rae_ray.config import ConfigError, RunConfig, config_from_dict, load_config
from rae_ray.io import InputError, resolve_uri
from rae_ray.llm.client import FatalEndpointError

DEMO_MODEL = "sim-judge"


def demo_config(base_url: str, out: str, images: str = "text", catalog: str = "sample:products.parquet") -> RunConfig:
    """The embedded default: bundled chorus sample, simulated endpoint, output folder `out`."""
    root = Path(resolve_uri(out))
    image_settings = {}
    if images != "text":
        image_settings = {"images": {"mode": images, "allow_hosts": ["127.0.0.1"]}}
    return config_from_dict(
        {
            **image_settings,
            "run_id": root.name,
            "input": {"log": "sample:search_log.parquet", "catalog": catalog},
            "llm": {
                "endpoints": {"default": {"base_url": base_url, "api_key_env": "RAE_SIM_API_KEY", "api_key_required": False}},
                # Reply lengths of the simulated judge, as measured; `rae-ray estimate` prices with them.
                "guidelines": {"model": DEMO_MODEL, "expected_output_tokens": 170},
                "annotate": {"model": DEMO_MODEL, "expected_output_tokens": 50},
                **({"captions": {"model": DEMO_MODEL}} if images == "caption" else {}),
            },
            "compute": {"num_cpus": 2, "annotate": {"max_actors": 2, "max_concurrent_requests": 32}},
            "output": {"uri": str(root.parent)},
            "pricing": {DEMO_MODEL: {"input_per_1m": 0.15, "cached_input_per_1m": 0.075, "output_per_1m": 0.60}},
        },
        source="(demo)",
    )


def _print_result(result, k: int) -> None:
    from rae_ray.table import ranker_table

    manifest = result.manifest
    print()
    print(ranker_table(result.rankers, k))
    print()
    calls = manifest["llm_calls"]
    errors = sum(manifest["errors"].values())
    cost = manifest["cost_usd"]["total"]
    print(
        f"{manifest['pairs_unique']} unique pairs, {manifest['queries']} queries; LLM calls: "
        + ", ".join(f"{s} {n}" for s, n in calls.items())
        + f"; errors: {errors}; {manifest['seconds']['total']:.1f}s"
        + (f"; cost ${cost:.4f}" if cost is not None else "")
    )
    print(f"output: {result.root}")
    print(f"manifest: {result.root}/manifest.json")


def cmd_demo(args: argparse.Namespace) -> int:
    from rae_ray.job import run
    from rae_ray.sim.process import SimProcess

    out = args.out or os.path.join("rae-output", "demo-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    print("rae-ray demo: bundled chorus/Icecat sample (Apache-2.0 / Icecat Open Content License),")
    print("judged by the SIMULATED endpoint (an offline heuristic, not a real LLM), on a local Ray.")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimProcess(latency_ms=args.latency_ms, latency_jitter_ms=args.latency_ms / 2))
        print(f"simulated endpoint: {sim.base_url}")
        catalog = "sample:products.parquet"
        if args.images != "text":
            from rae_ray.demo_images import DemoImageServer

            sample = Path(resolve_uri(catalog))
            photos = stack.enter_context(DemoImageServer(sample))
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            catalog = str(photos.catalog_with_local_images(sample, tmp / "products.parquet"))
            print(f"images ({args.images} mode): SYNTHETIC product photos in each product's colour, served at {photos.base_url}")
        config = demo_config(sim.base_url, out, images=args.images, catalog=catalog)
        result = run(config)
    _print_result(result, config.k)
    print(f"demo wall time: {time.monotonic() - started:.1f}s (labels by a SIMULATED judge)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rae_ray.job import run

    config = load_config(args.config, args.set or [])
    result = run(config)
    _print_result(result, config.k)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rae_ray.sweep import load_sweep, run_sweep, sweep_options, sweep_table

    sweep_id, configs = load_sweep(args.sweep, args.set or [])
    parallel = args.parallel if args.parallel is not None else sweep_options(args.sweep).parallel
    result = run_sweep(sweep_id, configs, parallel=parallel)
    print()
    print(sweep_table(result, metric=args.metric, k=args.k))
    print(f"sweep comparison: {result.root}/comparison.parquet")
    if result.judges is not None:
        from rae_ray.judges import judges_lines

        print()
        print("\n".join(judges_lines(result.judges)))
        print(f"judges: {result.root}/judges.parquet")
    return 0


def _parallel(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("expects a whole number >= 1 or 'auto'")
    return int(value)


def cmd_estimate(args: argparse.Namespace) -> int:
    from rae_ray.estimate import estimate, estimate_json, format_estimate

    config = load_config(args.config, args.set or [])
    result = estimate(config)
    print(estimate_json(result) if args.json else format_estimate(result))
    return 0


def cmd_review_import(args: argparse.Namespace) -> int:
    from rae_ray.review_import import import_review

    result = import_review(args.file, args.store)
    print(f"imported {result.imported} human grades from {args.file} into {result.store}/human"
          + (f" ({result.not_graded} rows without human_grade skipped)" if result.not_graded else ""))
    print("later runs use them over any LLM label of those pairs and send those pairs to no LLM")
    return 0


def cmd_sim(argv: list[str]) -> int:
    from rae_ray.sim.__main__ import main as sim_main

    return sim_main(argv, prog="rae-ray sim")


def cmd_metrics(args: argparse.Namespace) -> int:
    from rae_ray.config import HumanLabelsConfig
    from rae_ray.label_files import parse_grade_map
    from rae_ray.offline import run_metrics
    from rae_ray.table import agreement_lines, comparison_lines, ranker_table

    try:
        ks = [int(k) for k in args.ks.split(",")]
    except ValueError:
        raise InputError(f"--ks: {args.ks!r} is not a comma-separated list of integers") from None
    human = None
    if args.human:
        human = HumanLabelsConfig(
            uri=args.human, column=args.human_column,
            rater_columns=[c.strip() for c in args.rater_columns.split(",") if c.strip()] if args.rater_columns else [],
            grade_map=parse_grade_map(args.human_grade_map if args.human_grade_map is not None else args.grade_map),
        )
    elif args.rater_columns:
        raise InputError("--rater-columns needs --human FILE")
    result = run_metrics(
        args.log, args.labels, args.label_column, parse_grade_map(args.grade_map), args.out, ks=ks,
        n_bootstrap=args.bootstrap, seed=args.seed, n_permutations=args.permutations, baseline=args.baseline,
        adjust=args.adjust, worst_n=args.worst_n, human=human, catalog_uri=args.catalog,
    )
    k = max(ks)
    print(ranker_table(result.rankers, k))
    evaluation = result.evaluation
    print()
    print("\n".join(comparison_lines(evaluation.comparisons, k)))
    if evaluation.agreement is not None:
        print()
        print("\n".join(agreement_lines(evaluation.agreement.summary, evaluation.agreement.system)))
    print()
    print(f"metrics: {result.root}/metrics/rankers.parquet, comparisons.parquet")
    print(f"review queue: {evaluation.review_queue.height} pairs in {result.root}/review/queue.csv")
    print(f"report: {result.report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rae-ray", description="Evaluate search rankers with LLM judges on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole job on the bundled sample against the simulated endpoint")
    demo.add_argument("--out", help="run folder (default ./rae-output/demo-<timestamp>)")
    demo.add_argument("--latency-ms", type=float, default=20.0, help="simulated endpoint latency (mean)")
    demo.add_argument("--images", choices=["text", "caption", "direct"], default="text",
                      help="image mode; caption/direct serve synthetic product photos locally")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the job from a config file (same code path as jobs/evaluate.py)")
    run.add_argument("--config", required=True, help="YAML config")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="run several variants of a config sharing one label store, compare them")
    sweep.add_argument("--sweep", required=True, help="sweep YAML: base config and variants")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key in every variant")
    sweep.add_argument("--metric", default="ndcg", help="metric of the printed table")
    sweep.add_argument("--k", type=int, default=10, help="cut-off of the printed table")
    sweep.add_argument("--parallel", type=_parallel, metavar="N|auto",
                       help="variants at once (default: the sweep file's `parallel`, else auto; 1: one after the other)")
    sweep.set_defaults(func=cmd_sweep)

    estimate = sub.add_parser("estimate", help="dry run: calls, tokens and cost before any LLM call")
    estimate.add_argument("--config", required=True, help="YAML config")
    estimate.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    estimate.add_argument("--json", action="store_true", help="print JSON")
    estimate.set_defaults(func=cmd_estimate)

    review = sub.add_parser("review", help="the review loop: people's grades back into the label store")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    review_import = review_sub.add_parser(
        "import", help="check a filled review queue (CSV) and store its human_grade rows as people's labels")
    review_import.add_argument("file", help="the filled review/queue.csv of a run (local or s3://)")
    review_import.add_argument("--store", required=True,
                               help="label store of the runs that should use them (store.uri, default <output.uri>/_store)")
    review_import.set_defaults(func=cmd_review_import)

    sub.add_parser("sim", help="the simulated OpenAI-compatible endpoint (see `rae-ray sim --help`)", add_help=False)

    metrics = sub.add_parser("metrics", help="metrics, comparisons, agreement and report from any labels and a log")
    metrics.add_argument("--log", required=True, help="search log (Parquet file or folder, local or s3://)")
    metrics.add_argument("--labels", required=True, help="labels (Parquet or CSV) with query, product_id, COL")
    metrics.add_argument("--label-column", default="grade", help="column holding the label")
    metrics.add_argument("--grade-map", help="LABEL=GRADE,... mapping labels onto grades, e.g. 3=2,2=1,1=1,0=0")
    metrics.add_argument("--ks", default="5,10", help="cut-offs, comma separated")
    metrics.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    metrics.add_argument("--permutations", type=int, default=10000, help="sign flips of the randomization test")
    metrics.add_argument("--seed", type=int, default=0)
    metrics.add_argument("--baseline", help="compare every ranker with this one (default: every pair)")
    metrics.add_argument("--adjust", choices=["holm", "bonferroni", "none"], default="holm",
                         help="multiple-comparison adjustment of p-values")
    metrics.add_argument("--worst-n", type=int, default=10, help="worst queries and regressions listed per ranker")
    metrics.add_argument("--catalog", help="product catalog (product_id, title) for titles in the report")
    metrics.add_argument("--human", help="human labels (Parquet or CSV) for the agreement section")
    metrics.add_argument("--human-column", default="label", help="column of --human compared with the labels")
    metrics.add_argument("--human-grade-map", help="LABEL=GRADE,... for --human (default: --grade-map)")
    metrics.add_argument("--rater-columns", help="columns of individual raters in --human, comma separated")
    metrics.add_argument("--out", required=True, help="output folder; writes OUT/metrics, agreement, review, trec, report.html")
    metrics.set_defaults(func=cmd_metrics)

    from rae_ray.labelstore.commands import add_parser as add_store_parser

    add_store_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        return cmd_sim(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, InputError, FatalEndpointError) as error:
        print(f"rae-ray: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
