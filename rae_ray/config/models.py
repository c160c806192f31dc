"""The run configuration's models (pydantic v2): every setting, its type, bounds and checks.

Each setting is documented once, in its `Field(description=...)` (`RunConfig.model_json_schema()` lists them).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from rae_ray.config.examples import ExamplesConfig
from rae_ray.config.confidence import VoteSettings


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, bad value, missing secret."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HumanLabelsConfig(_Model):
    uri: str = Field(description="Parquet or CSV with query, product_id and the label column(s).")
    column: str = Field(default="label", description="Label column compared with the judge.")
    rater_columns: list[str] = Field(
        default_factory=list, description="Columns of individual raters, for human-vs-human agreement."
    )
    grade_map: dict[int, int] = Field(
        default_factory=dict, description="Human label -> project grade; empty means labels are grades already."
    )


class InputConfig(_Model):
    log: str | list[str] | dict[str, str | list[str]] = Field(
        description="Search log: Parquet file, folder or list of them; local or s3://. Or one log per ranker "
        "version, {ranker: uri}: its rows get that ranker (the files need no ranker column)."
    )
    catalog: str | None = Field(
        default=None, description="Product catalog Parquet; when absent, product columns come from the log."
    )
    human_labels: HumanLabelsConfig | None = Field(default=None, description="Optional human labels.")

    @property
    def log_sources(self) -> list[tuple[str | None, str]]:
        """(ranker the rows belong to, or None to read the ranker column; URI) per log input."""
        if isinstance(self.log, str):
            return [(None, self.log)]
        if isinstance(self.log, list):
            return [(None, uri) for uri in self.log]
        return [(ranker, uri) for ranker, uris in self.log.items() for uri in ([uris] if isinstance(uris, str) else uris)]

    @property
    def log_uris(self) -> list[str]:
        return [uri for _, uri in self.log_sources]


class SamplingConfig(_Model):
    mode: Literal["all", "stratified"] = Field(
        default="all", description="'all' queries, or 'stratified': n_queries drawn from head/torso/tail."
    )
    n_queries: int | None = Field(default=None, ge=1, description="Queries to draw in stratified mode.")
    seed: int = Field(default=0, description="Seed of the query sample.")
    head_share: float = Field(default=0.2, gt=0, lt=1, description="Share of queries (by query_count) in head.")
    torso_share: float = Field(default=0.3, gt=0, lt=1, description="Share of queries in torso; the rest is tail.")

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if self.mode == "stratified" and self.n_queries is None:
            raise ValueError("sampling.n_queries is required when sampling.mode is 'stratified'")
        if self.head_share + self.torso_share >= 1:
            raise ValueError("sampling.head_share + sampling.torso_share must be below 1")
        return self


class Grade(_Model):
    grade: int = Field(ge=0, description="Integer grade; higher is more relevant.")
    name: str = Field(min_length=1, description="Label name, e.g. highly_relevant.")
    description: str = Field(description="What the grade means, shown to the judge.")


PAPER_SCALE = [
    Grade(grade=2, name="highly_relevant", description="Matches every essential requirement of the query."),
    Grade(grade=1, name="acceptable_substitute", description="Misses a requirement but could still satisfy the shopper."),
    Grade(grade=0, name="irrelevant", description="Does not serve the query."),
]


class ScaleConfig(_Model):
    grades: list[Grade] = Field(
        default_factory=lambda: [g.model_copy() for g in PAPER_SCALE],
        description="The label scale; default the paper's 3 grades. Gain of grade g in nDCG is 2^g - 1.",
    )

    @field_validator("grades")
    @classmethod
    def _distinct(cls, grades: list[Grade]) -> list[Grade]:
        if len(grades) < 2:
            raise ValueError("a scale needs at least two grades")
        if len({g.grade for g in grades}) != len(grades) or len({g.name for g in grades}) != len(grades):
            raise ValueError("grades and names of the scale must be distinct")
        return sorted(grades, key=lambda g: -g.grade)

    @property
    def top_grade(self) -> int:
        return self.grades[0].grade

    def as_dicts(self) -> list[dict[str, Any]]:
        return [g.model_dump() for g in self.grades]


class EndpointConfig(_Model):
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    api_key_required: bool = Field(
        default=True, description="Fail before the run when the key variable is unset (false for local servers)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-call timeout, seconds.")
    max_retries: int = Field(default=6, ge=0, le=20, description="Retries on 429, 5xx, timeouts, resets.")
    backoff_base_s: float = Field(default=0.5, gt=0, description="First backoff; doubles per retry, with jitter.")
    backoff_max_s: float = Field(default=30.0, gt=0, description="Cap of one backoff wait, seconds.")
    max_parse_retries: int = Field(
        default=1, ge=0, le=5, description="Re-asks when a reply does not parse against the schema."
    )
    json_schema: bool = Field(
        default=True,
        description="Send response_format json_schema (strict). false, for servers without it (they answer 400): "
        "no response_format, the schema is written into the system message and replies are parsed tolerantly.",
    )
    length_limits: bool = Field(
        default=False,
        description="Add length limits to the reply schemas (maxLength on free text, maxItems on lists), for servers "
        "that decode under the schema (llama.cpp, vLLM): a small model that loops in its reasoning then ends the "
        "reply instead of being cut at max_tokens. OpenAI's strict mode rejects these keywords: leave it off there.",
    )
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute allowed per model, cluster-wide.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute allowed per model, cluster-wide.")
    max_in_flight: int | None = Field(
        default=None, ge=1,
        description="The endpoint's limit of requests in flight at once, over the whole cluster. It caps each actor "
        "of a stage at max_in_flight // compute.<stage>.max_actors (at least 1) when that is below the actor's own "
        "compute.<stage>.max_concurrent_requests; None: only the per-actor setting applies.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, base_url: str) -> str:
        from urllib.parse import urlparse

        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host, e.g. https://api.openai.com/v1")
        if parsed.username or parsed.password:  # the value itself is not repeated: it may hold a key
            raise ValueError("base_url must not carry credentials (user:password@); put the key in api_key_env")
        return base_url

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):  # the value itself is not repeated: it may be a key
            raise ValueError(
                "api_key_env is the NAME of an environment variable holding the key (letters, digits, _), "
                "not the key itself"
            )
        return name

    def api_key(self) -> SecretStr:
        value = os.environ.get(self.api_key_env)
        if not value:
            if self.api_key_required:
                raise ConfigError(
                    f"environment variable {self.api_key_env} is not set (llm endpoint {self.base_url}); "
                    "export it, or set api_key_required: false for a server that needs no key"
                )
            value = "no-key"
        return SecretStr(value)


class StageModelConfig(_Model):
    endpoint: str = Field(default="default", description="Name of an entry of llm.endpoints.")
    model: str = Field(description="Model name sent to the endpoint.")
    temperature: float = Field(
        default=0.0, ge=0, le=2, description="Sampling temperature, sent as `temperature` (not sent when reasoning)."
    )
    max_output_tokens: int = Field(
        default=800, ge=16,
        description="Reply tokens of one call: sent as `max_tokens` (the parameter every OpenAI-compatible server "
        "knows), or as `max_completion_tokens` when reasoning.",
    )
    max_output_tokens_retry: int = Field(
        default=2000, ge=0, le=200_000,
        description="A reply cut at max_output_tokens (finish_reason length) is asked again once, the same messages "
        "with this limit; at or below max_output_tokens there is no second ask. Cut again: the row's error says so.",
    )
    reasoning: bool = Field(
        default=False,
        description="A reasoning model (OpenAI o-series, gpt-5 family): sends no `temperature` and "
        "`max_completion_tokens` instead of `max_tokens` (they answer 400 to both); reasoning tokens count "
        "against max_output_tokens.",
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        default=None, description="`reasoning_effort` sent to a reasoning model (needs reasoning: true); None: the "
        "model's default.",
    )
    expected_output_tokens: int | None = Field(
        default=None, ge=1,
        description="Reply length `rae-ray estimate` assumes; default: the mean in the label store, else 300 "
        "for guidelines, 120 for captions, 80 for judgements.",
    )

    @model_validator(mode="after")
    def _effort_needs_reasoning(self) -> StageModelConfig:
        if self.reasoning_effort is not None and not self.reasoning:
            raise ValueError("reasoning_effort is sent to reasoning models only: set reasoning: true as well")
        return self


class AnnotateModelConfig(StageModelConfig, VoteSettings):
    """The judge's model; it alone may go through a Batch API (the other stages feed it and are small), and it
    alone may vote (samples, panel: `config.confidence`)."""

    batch: bool = Field(
        default=False,
        description="Send the judgements through the endpoint's Batch API (/v1/files, /v1/batches; OpenAI bills "
        "half, answers within batch_completion_window). Each Ray Data batch of compute.annotate.batch_size pairs "
        "becomes one provider batch; resumable (state under the label store).",
    )
    batch_poll_s: float = Field(default=30.0, gt=0, description="Seconds between polls of a submitted batch.")
    batch_completion_window: str = Field(default="24h", description="completion_window of the batches.")
    examples: ExamplesConfig | None = Field(
        default=None, description="Products of the same query graded by people, put into the judge's prompt (in a "
        "data block); its own prompt version, and the examples shown are part of the label key.",
    )


class GuidelineModelConfig(StageModelConfig):
    enabled: bool = Field(
        default=True,
        description="Write a guideline per query and judge every pair against it. false: the paper's ablation: "
        "no guideline calls, the judge sees only the query, the scale and the product (its own annotation prompt "
        "version, so its labels are stored apart; labels' guideline_id is null).",
    )


class LLMConfig(_Model):
    endpoints: dict[str, EndpointConfig] = Field(description="Named endpoints; stages refer to them by name.")
    guidelines: GuidelineModelConfig = Field(description="Model writing the per-query guidelines.")
    annotate: AnnotateModelConfig = Field(description="Model judging each (query, product) pair.")
    captions: StageModelConfig | None = Field(
        default=None, description="Vision model describing product images (images.mode: caption)."
    )

    @model_validator(mode="after")
    def _endpoints_exist(self) -> LLMConfig:
        for stage in ("guidelines", "annotate", "captions"):
            if getattr(self, stage) is None:
                continue
            name = getattr(self, stage).endpoint
            if name not in self.endpoints:
                raise ValueError(f"llm.{stage}.endpoint '{name}' is not in llm.endpoints ({sorted(self.endpoints)})")
        for model, name in self.annotate.judges[1:]:
            if name not in self.endpoints:
                raise ValueError(f"llm.annotate.panel: {model}'s endpoint '{name}' is not in llm.endpoints")
        return self

    def endpoint_for(self, stage: str) -> EndpointConfig:
        return self.endpoints[getattr(self, stage).endpoint]


class StageComputeConfig(_Model):
    min_actors: int = Field(default=1, ge=1, description="Actor pool minimum size.")
    max_actors: int = Field(default=2, ge=1, description="Actor pool maximum size (autoscaling).")
    batch_size: int = Field(default=64, ge=1, description="Rows per batch handed to one actor call.")
    max_concurrent_requests: int = Field(
        default=32, ge=1,
        description="Requests (image fetches, for compute.images) one actor has in flight at once, its batches' "
        "requests gathered under it; the endpoint's cluster-wide llm.endpoints.<name>.max_in_flight may lower it.",
    )
    max_concurrent_batches: int = Field(default=4, ge=1, description="Batches one actor works on at once.")
    num_cpus: float = Field(default=0.25, gt=0, description="CPUs reserved per actor (the work is I/O bound).")

    @model_validator(mode="after")
    def _bounds(self) -> StageComputeConfig:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        return self


class ComputeConfig(_Model):
    ray_address: str | None = Field(
        default=None,
        description="Ray address ('auto' joins a cluster started with `ray start`); None starts a local Ray "
        "unless RAY_ADDRESS is set (as under `ray job submit`).",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray started by the job.")
    shuffle_partitions: int = Field(
        default=64, ge=1, description="Most partitions of a hash shuffle (dedup, joins); fewer on small inputs."
    )
    shuffle: Literal["sort", "hash"] = Field(
        default="sort",
        description="How group-bys and aggregates shuffle: 'sort' runs as tasks on pooled workers (no actors to "
        "start: a 20-query run took 13 s against 17-21 s with 'hash' on 2 CPUs); 'hash' is Ray's hash shuffle "
        "(aggregator actors), for very large logs on big clusters. Joins always hash-shuffle.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10,
        description="Runs of the steps when Ray loses a node, worker or object mid-run; each attempt resumes from "
        "the label store, so only what was not stored yet is sent again.",
    )
    guidelines: StageComputeConfig = Field(default_factory=lambda: StageComputeConfig(batch_size=16))
    images: StageComputeConfig = Field(default_factory=lambda: StageComputeConfig(batch_size=16))
    captions: StageComputeConfig = Field(default_factory=lambda: StageComputeConfig(batch_size=16))
    annotate: StageComputeConfig = Field(default_factory=StageComputeConfig)


class OutputConfig(_Model):
    uri: str = Field(default="./rae-output", description="Folder or s3:// prefix; a run writes OUT=uri/run_id.")


class StoreConfig(_Model):
    enabled: bool = Field(default=True, description="Reuse guidelines and labels of earlier runs, and add new ones.")
    uri: str | None = Field(
        default=None, description="Label store folder or s3:// prefix; default <output.uri>/_store (beside the runs)."
    )


DEFAULT_KS = (5, 10)


class MetricsConfig(_Model):
    ks: list[int] = Field(
        default_factory=lambda: list(DEFAULT_KS),
        description="Cut-offs of the metrics, each at most the run's k (a list cut at k has no 20th item). Default: "
        "5 and 10, those not above k (k itself when both are).",
    )
    bootstrap: int = Field(default=1000, ge=0, description="Bootstrap resamples for confidence intervals.")
    permutations: int = Field(default=10000, ge=100, description="Sign flips of the paired randomization test.")
    seed: int = Field(default=0, description="Seed of bootstrap and permutation tests.")
    baseline: str | None = Field(
        default=None, description="Compare each ranker with this one; None compares every pair of rankers."
    )
    adjust: Literal["holm", "bonferroni", "none"] = Field(
        default="holm", description="Multiple-comparison adjustment of the comparison p-values."
    )
    worst_n: int = Field(default=10, ge=1, description="Worst queries (and largest regressions) listed per ranker.")
    ideal: Literal["run", "store"] = Field(
        default="run",
        description="The products nDCG's ideal DCG is built from. run: every product of the query judged in this "
        "run, so a ranker's nDCG moves when another ranker joins the run. store: also every label the label store "
        "holds for the query (normalized) under this run's judging context (judge model and prompt version, "
        "scale, image mode, guideline and caption models and prompts), one grade per product (this run's, else "
        "the highest stored), so a ranker's nDCG depends on its own list and the store's labels, not on the "
        "run's other rankers (the pool grows when a run judges products nobody had); store records written "
        "before records carried query and context do not count. Needs the label store.",
    )

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("metrics.ks must be a non-empty list of positive integers")
        return sorted(set(ks))


class Price(_Model):
    input_per_1m: float = Field(ge=0, description="USD per 1M prompt tokens.")
    cached_input_per_1m: float = Field(ge=0, description="USD per 1M cached prompt tokens.")
    output_per_1m: float = Field(ge=0, description="USD per 1M completion tokens.")
    batch_factor: float = Field(
        default=0.5, ge=0, le=1, description="Share of these prices paid through a Batch API (OpenAI: 0.5)."
    )

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        """USD for these tokens (`prompt_tokens` includes the cached ones); `batch`: at the Batch API's share.

        The one price rule: the manifest, `rae-ray estimate`, the client and the cost guard all charge with it."""
        factor = self.batch_factor if batch else 1.0
        return factor * ((prompt_tokens - cached_tokens) * self.input_per_1m + cached_tokens * self.cached_input_per_1m
                         + completion_tokens * self.output_per_1m) / 1e6


class ImageConfig(_Model):
    mode: Literal["text", "caption", "direct"] = Field(
        default="text",
        description="text: no images; caption: a vision model describes each image, the text goes to the judge; "
        "direct: the judge sees the image itself.",
    )
    max_bytes: int = Field(default=10_000_000, ge=1, description="Largest image download, bytes.")
    max_pixels: int = Field(default=40_000_000, ge=1, description="Largest decoded image, pixels (bomb guard).")
    max_side: int = Field(default=768, ge=16, description="Images are resized so the longer side is at most this.")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    timeout_s: float = Field(default=15.0, gt=0, description="Per-image fetch timeout, seconds.")
    max_redirects: int = Field(default=3, ge=0, le=10)
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts fetched even if they resolve to loopback/private addresses (e.g. a test image server).",
    )
    allow_buckets: list[str] = Field(
        default_factory=list,
        description="S3 buckets s3:// image URLs may name; an image in any other bucket is refused (the workers "
        "can read more than product photos, and what they fetch goes to the LLM endpoint).",
    )


class StorageConfig(_Model):
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL or AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region; default AWS_REGION or us-east-1.")


class RunConfig(_Model):
    run_id: str | None = Field(default=None, description="Run folder name; default run-<UTC timestamp>.")
    input: InputConfig
    rankers: list[str] | None = Field(default=None, description="Ranker versions to evaluate; None = all in log.")
    k: int = Field(default=10, ge=1, le=1000, description="Each ranker's list is cut at rank k.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    llm: LLMConfig
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    images: ImageConfig = Field(default_factory=ImageConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    pricing: dict[str, Price] = Field(default_factory=dict, description="Price per model name.")
    max_cost_usd: float | None = Field(
        default=None, gt=0, description="Stop sending calls once this much is spent (needs pricing); the run ends cleanly."
    )

    @model_validator(mode="after")
    def _captions_model(self) -> RunConfig:
        if self.images.mode == "caption" and self.llm.captions is None:
            raise ValueError("images.mode 'caption' needs llm.captions (the vision model)")
        return self

    @model_validator(mode="after")
    def _store_ideal(self) -> RunConfig:
        if self.metrics.ideal == "store" and not self.store.enabled:
            raise ValueError("metrics.ideal 'store' builds nDCG's ideal from the label store, which is off "
                             "(store.enabled: false): turn the store on or use metrics.ideal 'run'")
        return self

    @model_validator(mode="after")
    def _cutoffs_within_k(self) -> RunConfig:
        if "ks" not in self.metrics.model_fields_set:
            self.metrics.ks = [k for k in self.metrics.ks if k <= self.k] or [self.k]
        elif max(self.metrics.ks) > self.k:
            raise ValueError(f"metrics.ks {self.metrics.ks} has cut-offs above k={self.k}: each ranker's list is cut "
                             f"at rank k, so raise k or drop them")
        return self

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, run_id: str | None) -> str | None:
        if run_id is not None and (not run_id or "/" in run_id or run_id in (".", "..")):
            raise ValueError("run_id must be a non-empty name without '/'")
        return run_id
