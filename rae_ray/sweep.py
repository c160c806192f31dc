"""Sweeps: several evaluation variants (k, models, prompts, rankers) of one base config, sharing one label store.

A sweep file names a base config and its variants, each a set of `--set`-style overrides:

    base: jobs/configs/demo.yaml
    sweep_id: nightly            # runs are <sweep_id>-<variant>; default sweep-<UTC timestamp>
    set: {metrics.bootstrap: 500}   # optional: overrides of every variant (before --set and the variant's own)
    parallel: auto               # optional: variants at once (rae_ray.config.sweep.SweepOptions)
    variants:
      k10: {}
      k5: {k: 5}
      judge-b: {llm.annotate.model: other-model}

Variants run side by side on the same Ray when the cluster has room (`rae_ray.sweep_runs`), each with its own
endpoint limits, and share the base config's label store: a variant that shares store keys (or a rate-limited
model) with an earlier one waits for it, so what one variant paid for, the next reuses. The sweep writes
`<output.uri>/<sweep_id>/comparison.parquet` (variant, run_id, ranker, metric, k, value, ci_low, ci_high,
n_queries) and `rankings.parquet` (per variant and metric@k: the rankers' order, and Kendall's tau against the
first variant's order), and prints one table across variants. When the configs have `input.human_labels`,
it also writes `judges.parquet` (`rae_ray.judges`: each variant's agreement with people, with intervals, and
its cost; people's agreement with each other) and prints it, the best judge by Cohen's kappa marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from pydantic import ValidationError

from rae_ray.config import ConfigError, RunConfig, load_config
from rae_ray.config.sweep import SweepOptions
from rae_ray.io import RunLayout, join_uri, resolve_uri
from rae_ray.judges import JudgeRun, judges_table
from rae_ray.metrics.agreement import kendall_tau


@dataclass
class SweepResult:
    root: str
    comparison: pl.DataFrame
    rankings: pl.DataFrame
    judges: pl.DataFrame | None = None  # with human labels: rae_ray.judges.JUDGES_SCHEMA


def _read_spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"sweep file not found: {path}") from None
    unknown = set(spec) - {"base", "sweep_id", "set", "variants", *SweepOptions.model_fields}
    if unknown:
        raise ConfigError(f"sweep {path}: unknown key(s) {sorted(unknown)} "
                          f"(expected base, sweep_id, set, variants, {', '.join(SweepOptions.model_fields)})")
    return spec


def sweep_options(path: str | Path) -> SweepOptions:
    """The sweep file's own settings (`parallel`)."""
    path = Path(path)
    spec = _read_spec(path)
    try:
        return SweepOptions(**{k: v for k, v in spec.items() if k in SweepOptions.model_fields})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][:1]))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"sweep {path}: {problems}") from None


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[str, dict[str, RunConfig]]:
    """(sweep_id, {variant: config}) from a sweep file; the base path is relative to the sweep file."""
    path = Path(path)
    spec = _read_spec(path)
    sweep_options(path)  # a bad `parallel` stops here, before any run
    if not isinstance(spec.get("set") or {}, dict):
        raise ConfigError(f"sweep {path}: 'set' must map config keys to values")
    if not spec.get("base") or not spec.get("variants"):
        raise ConfigError(f"sweep {path}: needs 'base' (a config file) and 'variants' (name: overrides)")
    base = Path(spec["base"])
    if not base.is_absolute() and not base.exists():
        base = path.parent / base
    sweep_id = spec.get("sweep_id") or "sweep-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    configs = {}
    common = _as_overrides(spec.get("set"))
    for name, changes in spec["variants"].items():
        config = load_config(base, [*common, *overrides, *_as_overrides(changes), f"run_id={sweep_id}-{name}"])
        configs[str(name)] = config
    return sweep_id, configs


def _as_overrides(changes: dict | None) -> list[str]:
    """{dotted key: value} -> `--set`-style key=value strings (values as YAML)."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
            for key, value in (changes or {}).items()]


def rankings(comparison: pl.DataFrame) -> pl.DataFrame:
    """Per variant and metric@k: rankers best first, and Kendall's tau with the first variant's order."""
    rows: list[dict[str, Any]] = []
    variants = comparison["variant"].unique(maintain_order=True).to_list()
    for (metric, k), group in comparison.group_by(["metric", "k"], maintain_order=True):
        reference = None
        for variant in variants:
            scores = group.filter(pl.col("variant") == variant).sort("ranker")
            if scores.is_empty():
                continue
            order = scores.sort("value", descending=True)["ranker"].to_list()
            tau = None
            if reference is None:
                reference = scores
            else:
                common = reference.join(scores, on="ranker", suffix="_v")
                if common.height >= 2:
                    tau = kendall_tau(common["value"].to_numpy(), common["value_v"].to_numpy())
            rows.append({"variant": variant, "metric": metric, "k": k, "order": " > ".join(order),
                         "kendall_tau_vs_first": None if tau is None or np.isnan(tau) else float(tau)})
    return pl.DataFrame(rows, schema={"variant": pl.String, "metric": pl.String, "k": pl.Int32, "order": pl.String,
                                      "kendall_tau_vs_first": pl.Float64})


def judge_run(variant: str, config: RunConfig, result) -> JudgeRun | None:
    """A variant's row input of the judges table, from its config and `pipeline.RunResult`; None without people."""
    if result.agreement is None:
        return None
    system = result.agreement.system
    return JudgeRun(
        variant=variant, run_id=config.run_id, annotate_model=config.llm.annotate.model,
        guidelines_model=config.llm.guidelines.model if config.llm.guidelines.enabled else "none",
        matched=result.agreement.matched, manifest=result.manifest,
        kendall_tau=float(system["kendall_tau"][0]) if system.height and system["kendall_tau"][0] is not None else None,
        examples_held_out=result.agreement.coverage.get("examples_held_out", 0),
        human_overridden=result.agreement.coverage.get("human_overridden", 0),
    )


def rater_columns(config: RunConfig) -> dict[str, str]:
    """Rater name -> its column in the matched pairs (the label column itself is `human_grade` there)."""
    human = config.input.human_labels
    return {c: ("human_grade" if c == human.column else c) for c in human.rater_columns} if human else {}


def run_sweep(sweep_id: str, configs: dict[str, RunConfig], parallel: int | str = "auto") -> SweepResult:
    """Every variant (side by side where the cluster has room and they share nothing), then the sweep's tables."""
    import ray

    from rae_ray.job import run
    from rae_ray.runtime import ensure_ray, make_job, progress
    from rae_ray.sweep_runs import fitting, nominal_shuffle_cpus, plan_line, run_variants, waits

    first = next(iter(configs.values()))
    ensure_ray(first)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    at_once = max(1, min(parallel if isinstance(parallel, int) else fitting(configs, cpus), len(configs)))
    variant_waits = waits(configs)
    progress(plan_line(sweep_id, configs, at_once, parallel, variant_waits))
    if at_once > fitting(configs, cpus):
        progress(f"note: {at_once} variants' actor pools and Ray Data's tasks want more than the {cpus:g} CPUs the "
                 "cluster has now: they may stall waiting for CPUs unless the cluster grows")
    if at_once > 1:  # progress bars of several datasets would overwrite each other; the lines say who is where
        ray.data.DataContext.get_current().enable_progress_bars = False
        with nominal_shuffle_cpus():
            results = run_variants(configs, lambda name, config: run(config), at_once, variant_waits)
    else:
        results = run_variants(configs, lambda name, config: run(config), at_once, variant_waits)

    frames = []
    judge_runs = []
    for name, config in configs.items():  # file order, whatever order they finished in
        result = results[name]
        frames.append(result.rankers.with_columns(pl.lit(name).alias("variant"), pl.lit(config.run_id).alias("run_id")))
        judged = judge_run(name, config, result)
        if judged is not None:
            judge_runs.append(judged)
    comparison = pl.concat(frames, how="diagonal_relaxed").select(
        "variant", "run_id", "ranker", "metric", "k", "value", "ci_low", "ci_high", "n_queries")
    ranks = rankings(comparison)
    job = make_job(first)
    layout = RunLayout(join_uri(resolve_uri(first.output.uri), sweep_id))
    job.storage.write_table(layout.path("comparison.parquet"), comparison.to_arrow())
    job.storage.write_table(layout.path("rankings.parquet"), ranks.to_arrow())
    judges = None
    if judge_runs:
        people = next(c for c in configs.values() if c.input.human_labels is not None)
        judges = judges_table(judge_runs, rater_columns(people), [g.grade for g in first.scale.grades],
                              n_bootstrap=first.metrics.bootstrap, seed=first.metrics.seed)
        job.storage.write_table(layout.path("judges.parquet"), judges.to_arrow())
    return SweepResult(root=layout.root, comparison=comparison, rankings=ranks, judges=judges)


def sweep_table(result: SweepResult, metric: str = "ndcg", k: int = 10) -> str:
    table = result.comparison.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    if table.is_empty():
        return f"(no {metric}@{k} in the sweep)"
    wide = table.pivot(on="variant", index="ranker", values="value").sort("ranker")
    # A variant without this cut-off (its k is below it) shows "-": metrics.ks never exceed k.
    variants = result.comparison["variant"].unique(maintain_order=True).to_list()
    wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(v) for v in variants if v not in wide.columns)
    width = max(10, *(len(v) for v in variants))
    lines = [f"{metric}@{k}".ljust(14) + "".join(v.rjust(width + 2) for v in variants)]
    for row in wide.iter_rows(named=True):
        lines.append(row["ranker"].ljust(14) + "".join(
            (f"{row[v]:.4f}" if row[v] is not None else "-").rjust(width + 2) for v in variants))
    for row in result.rankings.filter((pl.col("metric") == metric) & (pl.col("k") == k)).iter_rows(named=True):
        tau = row["kendall_tau_vs_first"]
        lines.append(f"{row['variant']}: {row['order']}" + (f"  (tau vs first {tau:.2f})" if tau is not None else ""))
    return "\n".join(lines)
