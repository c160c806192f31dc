"""Examples from people (llm.annotate.examples): choose each query's graded examples once, on the driver, from the
human labels and the product data of the run's pairs; the judge step puts them into the prompts and the evaluate
step holds their pairs out of every agreement figure."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rae_ray.inputs import PRODUCT_COLUMNS
from rae_ray.io import InputError
from rae_ray.label_files import map_grades, read_table
from rae_ray.runtime import Job, left_join, progress, to_polars
from rae_ray.stages.examples import EXAMPLES_SCHEMA, example_blocks, pick_examples


@dataclass(frozen=True)
class Examples:
    """pairs: (query, product_id) shown to the judge as examples; blocks: per query, the examples' JSON text and
    its hash (EXAMPLES_SCHEMA)."""

    pairs: pl.DataFrame
    blocks: pl.DataFrame


def choose_examples(job: Job, pairs) -> Examples | None:
    """The examples of every query of the run that people graded; None without llm.annotate.examples.

    Candidates are the human-labelled pairs of the run whose product the run can judge (its product data is what
    the example shows); the file's grades are mapped with grade_map and must lie on the run's scale.
    """
    from ray.data.expressions import col

    config = job.config.llm.annotate.examples
    if config is None:
        return None
    people = map_grades(read_table(config.uri, job.storage, "llm.annotate.examples"), config.column,
                        dict(config.grade_map), config.uri).drop_nulls("grade")
    grades = {g.grade: g.name for g in job.config.scale.grades}
    off_scale = sorted(set(people["grade"].to_list()) - set(grades))
    if off_scale:
        raise InputError(f"llm.annotate.examples {config.uri}: column '{config.column}' has grades {off_scale[:10]} "
                         f"outside the scale {sorted(grades)}; map them onto it (llm.annotate.examples.grade_map)")
    fields = [c for c in PRODUCT_COLUMNS if c in pairs.columns()]
    products = to_polars(
        pairs.filter(expr=col("product_id").is_in(people["product_id"].unique().to_list()) & col("pair_error").is_null())
        .select_columns(["query", "product_id", *fields]))
    if products.is_empty():
        chosen = people.clear()
    else:
        chosen = pick_examples(people.join(products, on=["query", "product_id"], how="inner"), config.per_query)
    blocks = example_blocks(chosen, grades) if chosen.height else pl.DataFrame(schema=EXAMPLES_SCHEMA)
    progress(f"examples: {chosen.height} human-labelled pairs shown to the judge for {blocks.height} queries "
             f"(held out of agreement)")
    return Examples(pairs=chosen.select("query", "product_id"), blocks=blocks)


def attach_examples(job: Job, pairs, examples: Examples | None):
    """`pairs` with their query's `examples` and `examples_id` (null for a query without examples)."""
    import ray

    if examples is None:
        return pairs
    return left_join(pairs, ray.data.from_arrow(examples.blocks.to_arrow()), ("query",), job.parts)
