"""The metrics step alone: metrics from any labels (human or LLM) and a search log, without Ray or an LLM."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl
from pydantic import ValidationError
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rae_ray.config import HumanLabelsConfig, MetricsConfig
from rae_ray.evaluation import EvaluationResult, FrameSource, evaluate, load_human_labels, segments_from_log
from rae_ray.io import InputError, RunLayout, Storage, resolve_uri
from rae_ray.metrics.evaluate import query_metrics


def parse_grade_map(text: str | None) -> dict[int, int]:
    """'3=2,2=1,1=1,0=0' -> {3: 2, 2: 1, 1: 1, 0: 0}."""
    if not text:
        return {}
    mapping = {}
    for item in text.split(","):
        source, sep, target = item.partition("=")
        try:
            mapping[int(source)] = int(target)
        except ValueError:
            raise InputError(f"--grade-map: {item!r} is not of the form LABEL=GRADE with integers") from None
        if not sep:
            raise InputError(f"--grade-map: {item!r} is not of the form LABEL=GRADE")
    return mapping


def read_table(uri: str, storage: Storage, role: str) -> pl.DataFrame:
    """A whole Parquet (file or folder) or CSV input as a polars frame."""
    resolved = resolve_uri(uri)
    fs, path = storage.fs(resolved)
    if resolved.endswith(".csv"):
        with fs.open_input_stream(path) as stream:
            return pl.from_arrow(pacsv.read_csv(stream))
    tables = []
    for file in storage.parquet_files(resolved):
        try:
            tables.append(pq.read_table(file, filesystem=fs))
        except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file
            raise InputError(f"{role} file {file}: not a readable Parquet file ({error})") from None
    return pl.concat([pl.from_arrow(t) for t in tables], how="diagonal_relaxed")


def _integer_column(labels: pl.DataFrame, column: str, source: str) -> pl.Series:
    raw = labels[column]
    if raw.dtype.is_integer():
        return raw.cast(pl.Int64)
    try:
        return raw.cast(pl.Int64, strict=True)
    except pl.exceptions.InvalidOperationError:
        raise InputError(f"labels {source}: column '{column}' has type {labels[column].dtype}, expected integers") from None


def map_label_columns(labels: pl.DataFrame, columns: list[str], grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """(query, product_id, *columns) with each label column mapped onto the project's grades; one row per pair."""
    for needed in ("query", "product_id", *columns):
        if needed not in labels.columns:
            raise InputError(f"labels {source}: missing column '{needed}' (has: {', '.join(labels.columns)})")
    mapped = []
    for column in columns:
        raw = _integer_column(labels, column, source)
        if grade_map:
            unknown = sorted(set(raw.drop_nulls().unique().to_list()) - set(grade_map))
            if unknown:
                raise InputError(f"labels {source}: column '{column}' has values {unknown} that --grade-map does not map")
            raw = raw.replace_strict(grade_map, return_dtype=pl.Int64, default=None)
        mapped.append(raw.alias(column).cast(pl.Int64))
    return labels.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), *mapped).unique(
        subset=["query", "product_id"], keep="first", maintain_order=True
    )


def map_grades(labels: pl.DataFrame, column: str, grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """(query, product_id, grade) from a label column, mapped onto the project's grades."""
    return map_label_columns(labels, [column], grade_map, source).rename({column: "grade"})


def judge_labels(labels: pl.DataFrame, column: str, grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """Labels for evaluation: query, product_id, grade, plus label, reasoning, error and title when the file has them
    (an LLM run's labels folder has the first three; human labels usually none)."""
    graded = map_grades(labels, column, grade_map, source)
    extra = [c for c in ("label", "reasoning", "error", "title") if c in labels.columns and c != column
             and labels[c].dtype == pl.String]
    if not extra:
        return graded
    details = labels.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), *extra).unique(
        subset=["query", "product_id"], keep="first", maintain_order=True
    )
    return graded.join(details, on=["query", "product_id"], how="left", maintain_order="left")


@dataclass
class MetricsResult:
    root: str
    rankers: pl.DataFrame
    queries: pl.DataFrame
    evaluation: EvaluationResult | None = None
    report: str | None = None


def run_metrics(
    log_uri: str, labels_uri: str, label_column: str, grade_map: dict[int, int], out: str,
    ks: list[int] = (5, 10), k: int | None = None, top_grade: int | None = None, n_bootstrap: int = 1000, seed: int = 0,
    storage: Storage | None = None, *, n_permutations: int = 10000, baseline: str | None = None,
    adjust: str = "holm", worst_n: int = 10, human: HumanLabelsConfig | None = None, catalog_uri: str | None = None,
    report: bool = True,
) -> MetricsResult:
    """Metrics, comparisons, problems, agreement (when `human` is given), review queue, TREC files and report.html
    from a search log and any labels; reads OUT/manifest.json for the report when the folder holds a run."""
    storage = storage or Storage()
    log = read_table(log_uri, storage, "search log")
    for needed in ("query", "ranker", "rank", "product_id"):
        if needed not in log.columns:
            raise InputError(f"search log {log_uri}: missing column '{needed}'")
    cut = k or max(ks)
    run = log.select(
        pl.col("ranker").cast(pl.String), pl.col("query").cast(pl.String), pl.col("rank").cast(pl.Int64),
        pl.col("product_id").cast(pl.String),
    ).filter(pl.col("rank") <= cut)
    labels = judge_labels(read_table(labels_uri, storage, "labels"), label_column, grade_map, labels_uri)
    top = top_grade if top_grade is not None else int(labels["grade"].max())
    by_query = query_metrics(run, labels, ks=list(ks), top_grade=top)
    layout = RunLayout(resolve_uri(out))
    if baseline is not None and baseline not in set(run["ranker"].unique().to_list()):
        raise InputError(f"--baseline {baseline!r} is not a ranker of the log ({sorted(run['ranker'].unique())})")
    try:
        config = MetricsConfig(
            ks=list(ks), bootstrap=n_bootstrap, permutations=n_permutations, seed=seed, baseline=baseline,
            adjust=adjust, worst_n=worst_n,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(f"metrics settings: {problems}") from None
    products = None
    if catalog_uri is not None:
        products = read_table(catalog_uri, storage, "catalog")
        if "product_id" not in products.columns or "title" not in products.columns:
            raise InputError(f"catalog {catalog_uri}: needs columns 'product_id' and 'title'")
    elif "title" in log.columns:
        products = log.select("product_id", "title")
    human_labels = load_human_labels(human, storage) if human is not None else None
    manifest = json.loads(storage.read_bytes(layout.manifest)) if storage.exists(layout.manifest) else None
    grades = sorted(set(range(0, top + 1)))
    result = evaluate(
        query_metrics=by_query, source=FrameSource(run, labels, products), config=config, storage=storage,
        layout=layout, segments=segments_from_log(log), human=human_labels, manifest=manifest, grades=grades,
    )
    report_uri = None
    if report:
        from rae_ray.report import write_report

        context = {"labels": labels_uri, "label_column": label_column, "log": log_uri, "human": human.uri if human else None}
        report_uri = write_report(result, manifest, storage, layout, context=context)
    return MetricsResult(root=layout.root, rankers=result.rankers, queries=by_query, evaluation=result, report=report_uri)


def comparison_lines(comparisons: pl.DataFrame, k: int, metric: str = "ndcg") -> list[str]:
    """Fixed-width lines of the comparisons of one metric@k: delta, CI, p, adjusted p, wins/ties/losses."""
    rows = comparisons.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    if rows.height == 0:
        return [f"(no comparisons of {metric}@{k}: fewer than two rankers)"]
    header = ["ranker_a", "ranker_b", f"delta {metric}@{k}", "95% CI", "p", "p adjusted", "W/T/L"]
    lines = [
        [r["ranker_a"], r["ranker_b"], f"{r['delta']:+.4f}",
         "-" if r["ci_low"] is None else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
         f"{r['p_value']:.4g}", f"{r['p_adjusted']:.4g}", f"{r['wins']}/{r['ties']}/{r['losses']}"]
        for r in rows.iter_rows(named=True)
    ]
    return _fixed_width(header, lines)


def agreement_lines(summary: pl.DataFrame, system: pl.DataFrame | None = None) -> list[str]:
    """Fixed-width lines of the agreement summary (judge vs human, judge vs rater, human vs human)."""
    header = ["kind", "a", "b", "pairs", "exact", "kappa", "quadratic kappa"]
    lines = [
        [r["kind"], r["rater_a"], r["rater_b"], str(r["n"]), f"{100 * r['exact']:.2f}%" if r["exact"] == r["exact"] else "-",
         f"{r['cohen_kappa']:.4f}", f"{r['quadratic_weighted_kappa']:.4f}"]
        for r in summary.iter_rows(named=True)
    ]
    out = _fixed_width(header, lines)
    if system is not None and system.height:
        row = system.row(0, named=True)
        out.append(f"Kendall's tau of the rankers' {row['metric']}@{row['k']}, judge vs human labels: "
                   f"{row['kendall_tau']:.4f} ({row['n_rankers']} rankers, {row['n_queries']} queries)")
    return out


def _fixed_width(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
