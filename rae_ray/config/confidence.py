"""Settings of confidence from repeated judgments: `llm.annotate.samples` and `llm.annotate.panel`.

Every vote of a pair is one judgement, stored under its own key (`labelstore.keys.vote_key`); the label is the
majority of the votes (`stages.votes`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PanelMember(BaseModel):
    """One more judge of every pair, beside llm.annotate.model; every other setting is llm.annotate's."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    model: str = Field(min_length=1, description="Model name sent to the endpoint (distinct within the panel).")
    endpoint: str | None = Field(
        default=None, description="Name of an entry of llm.endpoints; None: llm.annotate.endpoint.")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"model": value} if isinstance(value, str) else value


class VoteSettings(BaseModel):
    """The judge's votes per pair (mixed into `AnnotateModelConfig`, which has model, endpoint and temperature)."""

    samples: int = Field(
        default=1, ge=1, le=50,
        description="Judgements of every pair by each judge (votes); the label is the majority grade (a tie goes to "
        "the lower grade) with its confidence, the share of votes for it. Above 1 needs temperature > 0 (or "
        "reasoning: true): samples at temperature 0 would repeat one answer. Sample i > 0 is sent with seed i.",
    )
    panel: list[PanelMember] = Field(
        default_factory=list,
        description="More judges beside llm.annotate.model, each a model name or {model, endpoint}; each judges "
        "every pair `samples` times with llm.annotate's other settings.",
    )

    @model_validator(mode="after")
    def _votes(self):
        if self.samples > 1 and self.temperature == 0 and not self.reasoning:
            raise ValueError("llm.annotate.samples > 1 needs llm.annotate.temperature > 0 (at 0 every sample repeats "
                             "the same answer), e.g. 0.7")
        models = [self.model, *(m.model for m in self.panel)]
        if len(set(models)) != len(models):
            raise ValueError(f"llm.annotate.panel: every judge needs its own model name (judges: {models})")
        return self

    @property
    def judges(self) -> list[tuple[str, str]]:
        """(model, endpoint name) of every judge: llm.annotate's model first, then the panel's."""
        return [(self.model, self.endpoint), *((m.model, m.endpoint or self.endpoint) for m in self.panel)]

    @property
    def votes_per_pair(self) -> int:
        return self.samples * len(self.judges)
