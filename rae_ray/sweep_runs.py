"""A sweep's variants side by side: which variant waits for which, how many fit on the cluster, and running them
in threads of one driver (Ray Data executes several datasets at once from one driver's threads).

Variants that share nothing run at once, each with its own budget actor (its endpoints' rpm and tpm). A variant
waits for every earlier variant it shares something with:
- label-store keys (same store, same guideline, caption or judge model, same scale): it starts once the earlier
  variant has that stage's results in the store (`runtime.stage_done`), and finds them there. Started together,
  both would miss the store and both would pay for the same queries and pairs. A judge-b variant that differs
  from the first in its judge alone waits for the first one's guidelines, then judges beside it. The wait is per
  stage, not per key: two variants with the same judge and different rankers wait too, although only their
  common pairs are shared.
- a rate-limited model of an endpoint (rpm, tpm or max_in_flight on the same base_url and model): each run's
  budget allows the whole limit, so two runs at once would ask for twice what the endpoint allows. It waits for
  the earlier run's end.
"""

from __future__ import annotations

import json
import math
import queue
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rae_ray.config import RunConfig
from rae_ray.runtime import PROGRESS_PREFIX, STAGE_DONE, llm_stages, make_job, progress

# One CPU kept free beside the variants' actor pools: Ray Data's read, map and shuffle tasks take a whole CPU each,
# and a cluster whose CPUs all sit in idle actors of several pools would wait for ever.
TASK_CPUS = 1.0
NOMINAL_AGGREGATOR_CPUS = 0.01  # Ray Data's own lower bound for an aggregator
RUN = "run"  # the milestone of a whole run


@dataclass(frozen=True)
class Wait:
    """`variant` starts only once `after` has reached each of `stages` (a stage's results stored, or RUN: ended)."""

    variant: str
    after: str
    reason: str
    stages: tuple[str, ...]

    def describe(self) -> str:
        """"after k10's guidelines (same guideline keys)", "after k10 (same rate-limited model m)"."""
        whose = self.after if RUN in self.stages else f"{self.after}'s {' and '.join(self.stages)}"
        return f"after {whose} ({self.reason})"


def shared(config: RunConfig) -> dict[tuple, tuple[str, str]]:
    """What a variant may share with another (hashable descriptions): the reason it would wait, and for what."""
    out: dict[tuple, tuple[str, str]] = {}
    job = make_job(config)
    llm = config.llm
    if job.store is not None:
        scale = json.dumps(config.scale.as_dicts(), sort_keys=True)
        guidelines = llm.guidelines.model if llm.guidelines.enabled else None
        captions = llm.captions.model if config.images.mode == "caption" and llm.captions else None
        if guidelines is not None:
            out[("guidelines", job.store.uri, guidelines, scale)] = ("same guideline keys", "guidelines")
        if captions is not None:
            out[("captions", job.store.uri, captions)] = ("same caption keys", "captions")
        out[("labels", job.store.uri, llm.annotate.model, guidelines, captions, config.images.mode, scale)] = \
            ("same label keys", "annotate")
    for stage in llm_stages(config):
        endpoint, model = llm.endpoint_for(stage), getattr(llm, stage).model
        if endpoint.rpm or endpoint.tpm or endpoint.max_in_flight:
            out[("endpoint", endpoint.base_url, model)] = (f"same rate-limited model {model}", RUN)
    return out


def covers(config: RunConfig, other: RunConfig, stage: str) -> bool:
    """Whether `config`'s run stores every result of `stage` that `other`'s run with the same keys would: the same
    log, catalog, rankers and sampling (the same queries), and for pairs and images a k at least as large."""
    same_queries = (config.input == other.input and config.rankers == other.rankers
                    and config.sampling == other.sampling)
    return same_queries and (stage == "guidelines" or other.k <= config.k)


def waits(configs: dict[str, RunConfig]) -> dict[str, list[Wait]]:
    """For each variant, the earlier variants (in file order) it must wait for, and for which of their stages.

    For store keys it waits for the earlier variants that would store them, less those whose results another of
    them stores anyway (a k5 variant behind a k10 one: a later variant waits for k10 alone, not for k5 too).
    """
    found = {name: shared(config) for name, config in configs.items()}
    names = list(configs)
    out: dict[str, list[Wait]] = {}
    for i, name in enumerate(names):
        needs: dict[str, list[tuple[str, str]]] = {}  # earlier variant -> [(reason, stage)]
        for key, (reason, stage) in found[name].items():
            kept: list[str] = []
            for earlier in names[:i]:
                if key in found[earlier] and (stage == RUN or not any(
                        covers(configs[k], configs[earlier], stage) for k in kept)):
                    kept.append(earlier)
                    needs.setdefault(earlier, []).append((reason, stage))
        out[name] = []
        for earlier in names[:i]:
            if earlier in needs:
                reasons = ", ".join(dict.fromkeys(reason for reason, _ in needs[earlier]))
                stages = tuple(dict.fromkeys(stage for _, stage in needs[earlier]))
                out[name].append(Wait(name, earlier, reasons, (RUN,) if RUN in stages else stages))
    return out


@contextmanager
def nominal_shuffle_cpus(cpus: float = NOMINAL_AGGREGATOR_CPUS):
    """Joins' and hash shuffles' aggregator actors with a nominal CPU while several variants run.

    Ray Data gives each aggregator up to a quarter of the cluster's CPUs (min(cluster/4/aggregators, memory/4 GiB));
    Ray calls that CPU nominal, a guard against tasks without a memory request landing beside it. With several
    variants at once, their aggregators and actor pools together held all CPUs but 0.75 on 2 CPUs, no 1-CPU task
    could start, and every variant waited for the others (measured: a 3-variant sweep hung). Set on the driver's
    DataContext, which every dataset created meanwhile copies; restored after.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    names = ("join_operator_actor_num_cpus_override", "hash_shuffle_operator_actor_num_cpus_override")
    before = {name: getattr(context, name) for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray 2.60 calls the join one deprecated, yet reads it
        for name in names:
            setattr(context, name, cpus)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for name, value in before.items():
                setattr(context, name, value)


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
        waiting = [f"{w.variant} {w.describe()}" for ws in variant_waits.values() for w in ws]
        if waiting:
            text += "; " + "; ".join(waiting)
    return text


def run_variants(configs: dict[str, RunConfig], run_one: Callable[[str, RunConfig], Any], parallel: int,
                 variant_waits: dict[str, list[Wait]] | None = None) -> dict[str, Any]:
    """{variant: run_one(variant, config)}, up to `parallel` at a time, each once what it waits for is reached.

    A variant starts when a slot is free and the variants it waits for have reached the stages it needs (file
    order among those ready). With parallel > 1 each progress line of a variant starts with its name. When a
    variant fails, no variant starts after that; those running finish, then the first failure (in file order)
    is raised.
    """
    names = list(configs)
    if parallel == 1 or len(names) == 1:
        results = {}
        for i, name in enumerate(names, start=1):
            progress(f"sweep: variant {name} ({i}/{len(names)})")
            results[name] = run_one(name, configs[name])
        return results
    variant_waits = variant_waits if variant_waits is not None else waits(configs)
    reached: dict[str, set[str]] = {name: set() for name in names}  # milestones, written by the main thread only
    news: queue.Queue[tuple[str, str]] = queue.Queue()  # (variant, stage or RUN) from the variants' threads

    def variant(name: str) -> Any:
        prefix = PROGRESS_PREFIX.set(f"[{name}] ")
        told = STAGE_DONE.set(lambda stage: news.put((name, stage)))
        try:
            progress("variant started" + "".join(f"; {w.describe()}" for w in variant_waits[name]))
            return run_one(name, configs[name])
        except Exception as error:
            progress(f"variant failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}")
            raise
        finally:
            STAGE_DONE.reset(told)
            PROGRESS_PREFIX.reset(prefix)

    def ready(name: str) -> bool:
        return all(RUN in reached[w.after] or set(w.stages) <= reached[w.after] for w in variant_waits[name])

    pending = list(names)
    running: dict[str, Future] = {}
    finished: dict[str, Future] = {}
    failed = False
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rae-ray-sweep")
    try:
        while pending or running:
            for name in [] if failed else [n for n in pending if ready(n)]:
                if len(running) < parallel:
                    pending.remove(name)
                    running[name] = future = pool.submit(variant, name)
                    future.add_done_callback(lambda _, name=name: news.put((name, RUN)))
            if not running:
                break  # after a failure: what is pending never starts
            name, stage = news.get()
            reached[name].add(stage)
            if stage == RUN:
                finished[name] = running.pop(name)
                failed = failed or finished[name].exception() is not None
    except BaseException:  # Ctrl-C: do not wait here for the running variants (Ray's shutdown ends them)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    failures = [finished[n].exception() for n in names if n in finished and finished[n].exception() is not None]
    if failures:
        if pending:
            progress(f"sweep: not run after the failure: {', '.join(pending)}")
        raise failures[0]
    return {name: finished[name].result() for name in names}
