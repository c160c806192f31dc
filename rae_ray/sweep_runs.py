"""A sweep's variants side by side: which variant waits for which, how many fit on the cluster, and running them
in threads of one driver (Ray Data executes several datasets at once from one driver's threads).

Variants that share nothing run at once, each with its own budget actor (its endpoints' rpm and tpm). A variant
waits for every earlier variant it shares something with:
- label-store keys (same store, same guideline, caption or judge model, same scale): the earlier variant judges
  and publishes, the later one finds those results in the store. Run together, both would miss the store and
  both would pay for the same pair. The wait is per variant, not per pair: two variants with the same judge and
  different rankers wait too, although only their common pairs are shared.
- a rate-limited model of an endpoint (rpm, tpm or max_in_flight on the same base_url and model): each run's
  budget allows the whole limit, so two runs at once would ask for twice what the endpoint allows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rae_ray.config import RunConfig
from rae_ray.runtime import PROGRESS_PREFIX, llm_stages, make_job, progress

# One CPU kept free beside the variants' actor pools: Ray Data's read, map and shuffle tasks take a whole CPU each,
# and a cluster whose CPUs all sit in idle actors of several pools would wait for ever.
TASK_CPUS = 1.0


@dataclass(frozen=True)
class Wait:
    """`variant` starts only after `after` has finished, because of `reason`."""

    variant: str
    after: str
    reason: str


def shared(config: RunConfig) -> dict[tuple, str]:
    """What a variant may share with another (hashable descriptions), each with the reason it would wait."""
    out: dict[tuple, str] = {}
    job = make_job(config)
    llm = config.llm
    if job.store is not None:
        scale = json.dumps(config.scale.as_dicts(), sort_keys=True)
        guidelines = llm.guidelines.model if llm.guidelines.enabled else None
        captions = llm.captions.model if config.images.mode == "caption" and llm.captions else None
        if guidelines is not None:
            out[("guidelines", job.store.uri, guidelines, scale)] = "same guideline keys"
        if captions is not None:
            out[("captions", job.store.uri, captions)] = "same caption keys"
        out[("labels", job.store.uri, llm.annotate.model, guidelines, captions, config.images.mode, scale)] = \
            "same label keys"
    for stage in llm_stages(config):
        endpoint, model = llm.endpoint_for(stage), getattr(llm, stage).model
        if endpoint.rpm or endpoint.tpm or endpoint.max_in_flight:
            out[("endpoint", endpoint.base_url, model)] = f"same rate-limited model {model}"
    return out


def waits(configs: dict[str, RunConfig]) -> dict[str, list[Wait]]:
    """For each variant, the earlier variants (in file order) it must wait for."""
    found = {name: shared(config) for name, config in configs.items()}
    names = list(configs)
    out: dict[str, list[Wait]] = {}
    for i, name in enumerate(names):
        out[name] = []
        for earlier in names[:i]:
            common = [found[name][key] for key in found[name] if key in found[earlier]]
            if common:
                out[name].append(Wait(name, earlier, ", ".join(dict.fromkeys(common))))
    return out


def variant_cpus(config: RunConfig) -> float:
    """CPUs a variant's largest actor pool holds (a run's LLM stages run one after the other)."""
    stages = [*llm_stages(config), *(["images"] if config.images.mode != "text" else [])]
    return max(getattr(config.compute, s).max_actors * getattr(config.compute, s).num_cpus for s in stages)


def fitting(configs: dict[str, RunConfig], cluster_cpus: float) -> int:
    """Variants that fit at once: the cluster's CPUs less TASK_CPUS, over the largest variant's actor CPUs."""
    largest = max(variant_cpus(c) for c in configs.values())
    return max(1, min(len(configs), math.floor((cluster_cpus - TASK_CPUS) / largest + 1e-9)))


def plan_line(sweep_id: str, configs: dict[str, RunConfig], parallel: int, setting: Any,
              variant_waits: dict[str, list[Wait]]) -> str:
    text = (f"sweep {sweep_id}: {len(configs)} variants, " + ("one after the other" if parallel == 1 else
            f"up to {parallel} at a time") + f" (parallel: {setting})")
    if parallel > 1:
        waiting = [f"{w.variant} after {w.after} ({w.reason})" for ws in variant_waits.values() for w in ws]
        if waiting:
            text += "; " + "; ".join(waiting)
    return text


def run_variants(configs: dict[str, RunConfig], run_one: Callable[[str, RunConfig], Any], parallel: int,
                 variant_waits: dict[str, list[Wait]] | None = None) -> dict[str, Any]:
    """{variant: run_one(variant, config)}, up to `parallel` at a time, each after the variants it waits for.

    A variant starts when a slot is free and what it waits for has finished (in file order among those ready).
    With parallel > 1 every progress line of a variant starts with its name. When a variant fails, no variant
    starts after that; those running finish, then the first failure (in file order) is raised.
    """
    names = list(configs)
    if parallel == 1 or len(names) == 1:
        results = {}
        for i, name in enumerate(names, start=1):
            progress(f"sweep: variant {name} ({i}/{len(names)})")
            results[name] = run_one(name, configs[name])
        return results
    variant_waits = variant_waits if variant_waits is not None else waits(configs)

    def variant(name: str) -> Any:
        token = PROGRESS_PREFIX.set(f"[{name}] ")
        try:
            progress("variant started" + "".join(f"; after {w.after} ({w.reason})" for w in variant_waits[name]))
            return run_one(name, configs[name])
        except Exception as error:
            progress(f"variant failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}")
            raise
        finally:
            PROGRESS_PREFIX.reset(token)

    pending = list(names)
    running: dict[Future, str] = {}
    finished: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rae-ray-sweep") as pool:
        while pending or running:
            failed = any(f.exception() is not None for f in finished.values())
            for name in [] if failed else list(pending):
                if len(running) < parallel and all(w.after in finished for w in variant_waits[name]):
                    pending.remove(name)
                    running[pool.submit(variant, name)] = name
            if not running:
                break  # a failure: what is pending never starts
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                finished[running.pop(future)] = future
    failures = [finished[n].exception() for n in names if n in finished and finished[n].exception() is not None]
    if failures:
        if pending:
            progress(f"sweep: not run after the failure: {', '.join(pending)}")
        raise failures[0]
    return {name: finished[name].result() for name in names}
