"""A sweep file's own settings (besides base, sweep_id, set and variants, which `rae_ray.sweep` reads)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt

from rae_ray.config.models import _Model


class SweepOptions(_Model):
    parallel: Annotated[StrictInt, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="Variants running at once on the cluster, each with its own endpoint limits (budget actor). "
        "'auto': as many as the cluster's CPUs hold now (each variant's largest actor pool, max_actors x num_cpus, "
        "plus one CPU kept for Ray Data's tasks); N: at most N; 1: one after the other. Whatever the number, a "
        "variant that shares label-store keys with an earlier one (same store, same guideline, caption or judge "
        "model and scale) starts once that one has stored those results, and reuses them; one using the same "
        "rate-limited endpoint model (rpm, tpm or max_in_flight on the same base_url and model) waits for its end.",
    )
