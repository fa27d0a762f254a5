"""pipelines.yaml, modelled once.

`parse_config(path)` reads the YAML and validates it into `PromptcycleConfig`: a bad value, a missing or
unknown key, a duplicate key or bad YAML raises one `ConfigError` naming the file, the dotted path, what was
found and what was expected. This module holds the models and their parsing only and imports no registry;
`promptcycle.catalog.load_config` adds the checks of names (scorers, strategies, targets, providers, models).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptcycle.errors import ConfigError
from promptcycle.prompts import PromptTemplate

__all__ = [
    "ProviderConfig",
    "ModelConfig",
    "PromptConfig",
    "DatasetConfig",
    "LangSmithMapping",
    "LangSmithConfig",
    "LangSmithFeedbackConfig",
    "effective_langsmith",
    "LANGSMITH_PREFIX",
    "SplitConfig",
    "Thresholds",
    "OptimizationConfig",
    "TargetConfig",
    "ContentRules",
    "IntegrationConfig",
    "QualityRules",
    "GuardrailConfig",
    "CanaryConfig",
    "DeploymentConfig",
    "ResultsExpectation",
    "ResultsQualityConfig",
    "MonitorConfig",
    "ObservationConfig",
    "HealingConfig",
    "ScheduleConfig",
    "AlertChannelConfig",
    "AlertEscalationConfig",
    "AlertDeliveryConfig",
    "AlertsConfig",
    "effective_alerts",
    "PipelineConfig",
    "ApiConfig",
    "PromptcycleConfig",
    "parse_config",
    "DEFAULT_CONFIG_PATH",
]

DEFAULT_CONFIG_PATH = Path("pipelines.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(_Strict):
    """A model provider: the built-in simulator or any OpenAI-compatible endpoint."""

    kind: Literal["simulator", "openai"] = Field(
        description="'simulator' runs the simulated LLM world in-process over the OpenAI protocol; "
        "'openai' is any OpenAI-compatible endpoint (OpenAI, Groq, Ollama, vLLM, LiteLLM, or "
        "`promptcycle sim-server`).")
    base_url: str | None = Field(default=None, description="Endpoint base URL, e.g. https://api.openai.com/v1. "
                                 "Required for kind 'openai'.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    api_key_block: str | None = Field(default=None, description="Name of a ProviderCredentials Prefect block "
                                      "holding the API key (takes precedence over api_key_env).")
    max_concurrency: int = Field(default=32, ge=1, le=1024, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(default=None, gt=0, description="Request rate cap; none = unlimited.")
    global_concurrency_limit: str | None = Field(
        default=None, description="Name of a Prefect global concurrency limit that caps this provider's "
        "concurrent cells across all flows and processes. It must exist before a run "
        "(`prefect gcl create NAME --limit N`); a missing one stops the run before any call.")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=4, ge=0, le=20, description="Retries per call after the first attempt.")
    backoff_seconds: float = Field(default=0.5, ge=0, description="Base of the exponential backoff.")
    max_backoff_seconds: float = Field(default=30.0, ge=0, description="Cap on one backoff wait.")
    circuit_failure_threshold: int = Field(default=20, ge=1, description="Consecutive failures that open the breaker.")
    circuit_reset_seconds: float = Field(default=10.0, gt=0, description="Cool-down before the breaker half-opens.")
    max_response_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest answer body read, in bytes (default 1 MiB); reading "
        "stops at the cap and the call is recorded as a ResponseTooLargeError.")

    @model_validator(mode="after")
    def _openai_needs_base_url(self) -> "ProviderConfig":
        if self.kind == "openai" and not self.base_url:
            raise ValueError("kind 'openai' needs a base_url")
        return self


class ModelConfig(_Strict):
    """A model as the pipelines use it: which provider serves it, its id there, pricing and latency target."""

    provider: str = Field(description="Name of a provider in `providers`.")
    model: str = Field(description="The model id sent to the provider.")
    input_cost_per_mtok: float = Field(default=0.0, ge=0, description="USD per million input tokens.")
    output_cost_per_mtok: float = Field(default=0.0, ge=0, description="USD per million output tokens.")
    latency_target_ms: float = Field(default=2000.0, gt=0, description="Latency the latency scorer holds it to.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, gt=0, description="Cap on output tokens.")


class PromptConfig(_Strict):
    system: str = Field(default="", description="System message; may use {{variables}}.")
    template: str = Field(min_length=1, description="User message with {{variable}} placeholders.")

    def to_template(self) -> PromptTemplate:
        return PromptTemplate(template=self.template, system=self.system)


class SplitConfig(_Strict):
    train: float = Field(default=0.4, gt=0, lt=1)
    dev: float = Field(default=0.3, gt=0, lt=1)
    test: float = Field(default=0.3, gt=0, lt=1)
    seed: int = Field(default=7, description="Seed of the deterministic, stratified split.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        total = self.train + self.dev + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + dev + test must sum to 1, found {total:g}")
        return self


LANGSMITH_PREFIX = "langsmith:"
_EXAMPLE_ROOTS = ("inputs", "outputs", "metadata", "id")


class LangSmithMapping(_Strict):
    """Where each field of a test case is found in a LangSmith example: a dotted path starting at the
    example's `inputs`, `outputs`, `metadata` or `id` (e.g. `metadata.spectrum`, `outputs.facts`).
    The defaults read back exactly what `promptcycle datasets push` publishes."""

    id: str = Field(default="metadata.case_id", description="The case id (falls back to the example's id "
                    "when the example has no value there).")
    spectrum: str = Field(default="metadata.spectrum", description="The spectrum (category of test case).")
    inputs: str = Field(default="inputs", description="The object of template variables.")
    facts: str = Field(default="outputs.facts", description="The object of required facts (field -> value).")
    reference: str | None = Field(default="outputs.reference", description="The reference answer (text); null: "
                                  "none.")
    template: str | None = Field(default="metadata.template", description="The question template the case came "
                                 "from (for `optimization.cluster_field: template`); null: none.")

    @field_validator("id", "spectrum", "inputs", "facts", "reference", "template")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and v.split(".")[0] not in _EXAMPLE_ROOTS:
            raise ValueError(f"a path into the example starting with one of {', '.join(_EXAMPLE_ROOTS)}")
        return v


class DatasetConfig(_Strict):
    source: str = Field(description="'bundled:customer_insights', a path to a .jsonl, .csv or .parquet file "
                        "(relative paths are relative to pipelines.yaml), or 'langsmith:DATASET_NAME' (a LangSmith "
                        "dataset; see `mapping` and docs/langsmith.md).")
    spectrums: list[str] = Field(min_length=1, description="The spectrums (categories of test case) to evaluate.")
    min_cases_per_spectrum: int = Field(default=20, ge=1, description="Data-quality floor per spectrum.")
    splits: SplitConfig = Field(default_factory=SplitConfig)
    mapping: LangSmithMapping | None = Field(default=None, description="For a `langsmith:` source: where each "
                                             "case field is in the examples (default: what `datasets push` writes).")

    @model_validator(mode="after")
    def _langsmith_source(self) -> "DatasetConfig":
        if self.source.startswith(LANGSMITH_PREFIX):
            if not self.source.removeprefix(LANGSMITH_PREFIX).strip():
                raise ValueError("'langsmith:' needs a dataset name after it, e.g. 'langsmith:support-cases'")
        elif self.mapping is not None:
            raise ValueError("`mapping` applies to a 'langsmith:DATASET_NAME' source only")
        return self

    @property
    def langsmith_dataset(self) -> str | None:
        """The LangSmith dataset name of a `langsmith:` source, else None."""
        if not self.source.startswith(LANGSMITH_PREFIX):
            return None
        return self.source.removeprefix(LANGSMITH_PREFIX).strip()


class LangSmithConfig(_Strict):
    """The optional connection to LangSmith (docs/langsmith.md). promptcycle runs fully without it; nothing
    here is used unless a `langsmith:` dataset, `datasets push` or run mirroring asks for it. A pipeline's
    own `langsmith:` overrides the keys it sets."""

    api_url: str | None = Field(default=None, description="LangSmith API URL; default the LANGSMITH_ENDPOINT "
                                "environment variable, else https://api.smith.langchain.com.")
    api_key_env: str = Field(default="LANGSMITH_API_KEY", description="Environment variable holding the API key.")
    api_key_block: str | None = Field(default=None, description="Name of a 'LangSmith Credentials' Prefect block "
                                      "holding the API key (takes precedence over api_key_env).")
    dataset_name: str = Field(default="promptcycle-{pipeline}", description="Name of the LangSmith dataset "
                              "`promptcycle datasets push` publishes the pipeline's cases to; may use {pipeline}.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=600, description="Timeout of one request to LangSmith.")
    probe_timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="Timeout of the reachability check "
                                         "(GET /info) made before LangSmith is used; a failed check means "
                                         "'unavailable', never a slow evaluation.")
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries of a request answered 429 / 5xx or "
                             "not answered (honouring Retry-After).")
    mirror_runs: bool = Field(default=False, description="Mirror baseline and optimization runs to LangSmith as "
                              "experiments (one run per model × case × repeat, scores as feedback), in the "
                              "background; `--mirror-langsmith` / `--no-mirror-langsmith` override it per command.")
    mirror_batch_size: int = Field(default=500, ge=1, le=2000, description="Results per request when mirroring.")
    mirror_interval_seconds: float = Field(default=5.0, gt=0, le=600, description="How often the mirror sends what "
                                           "the run has stored since (it backs off while LangSmith fails).")
    mirror_drain_seconds: float = Field(default=10.0, ge=0, le=600, description="At the end of a run, how long the "
                                        "mirror may keep sending what is left (nothing when LangSmith was failing); "
                                        "the rest is counted and `promptcycle langsmith sync RUN_ID` sends it.")

    @field_validator("api_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("api_url must start with http:// or https://")
        return v

    @field_validator("dataset_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("{pipeline}", "x").strip():
            raise ValueError("dataset_name must not be empty")
        return v


def effective_langsmith(config: "PromptcycleConfig", pipeline: str | None = None) -> LangSmithConfig:
    """The top-level `langsmith:` with the keys the pipeline's own `langsmith:` sets laid over it."""
    top = config.langsmith
    own = config.pipeline(pipeline).langsmith if pipeline else None
    if own is None:
        return top
    return top.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})


class Thresholds(_Strict):
    """Quality levels, in points (0-100) of the weighted overall score."""

    critical: float = Field(default=85, ge=0, le=100)
    warning: float = Field(default=90, ge=0, le=100)
    target: float = Field(default=95, ge=0, le=100)
    excellent: float = Field(default=98, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if not (self.critical <= self.warning <= self.target <= self.excellent):
            raise ValueError("thresholds must satisfy critical <= warning <= target <= excellent")
        return self

    def level(self, quality: float) -> str:
        """critical (< critical), warning (< warning), ok (< target), target (< excellent) or excellent."""
        if quality < self.critical:
            return "critical"
        if quality < self.warning:
            return "warning"
        if quality < self.target:
            return "ok"
        if quality < self.excellent:
            return "target"
        return "excellent"


class OptimizationConfig(_Strict):
    """How the optimization phase searches for a better prompt and when it calls a win."""

    strategies: list[str] | Literal["auto"] = Field(
        default_factory=lambda: ["checklist", "format_spec", "few_shot", "grounding", "step_structure", "shorten",
                                 "combined", "meta"],
        description="Strategy names (see `promptcycle optimize --help`); each proposes candidate prompts. "
        "'auto': every registered strategy proposes, and the `max_candidates` budget is spent by what past "
        "optimizations learned (Thompson sampling on the strategies' success posteriors in this context, "
        "with the `exploration` floor) instead of in proposal order.")
    learning_memory: int = Field(default=100, ge=1, le=100_000, description="How many recent optimizations "
                                 "(cycles) the strategy posteriors remember.")
    exploration: float = Field(default=0.1, ge=0, le=1, description="With `strategies: auto`, the share of "
                               "candidate slots given to a strategy drawn uniformly (the exploration floor).")
    optimizer_model: str | None = Field(default=None, description="Model (from `models`) the `meta` strategy asks "
                                        "for rewrites; default: the pipeline's last model.")
    max_candidates: int = Field(default=12, ge=1, le=100, description="Cap on candidates screened on the dev split.")
    confirm_top: int = Field(default=3, ge=1, le=10, description="Best candidates confirmed on the test split.")
    screen_repeats: int = Field(default=1, ge=1, le=20, description="Repeats per case when screening on dev.")
    confirm_repeats: int = Field(default=3, ge=1, le=20, description="Repeats per case when confirming on test.")
    min_effect: float = Field(default=0.01, ge=0, le=1, description="Smallest improvement (in score units, "
                              "0.01 = 1 point) worth promoting.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="False-promotion budget: with `error_control: "
                         "spending`, across every confirmation against one current prompt (Holm within one).")
    error_control: Literal["spending", "per_confirmation"] = Field(
        default="spending", description="'spending': the j-th confirmation against the same current prompt runs "
        "at alpha x first_share, then shares of the rest that sum to alpha, so repeated cycles without a real "
        "gain promote anything at most alpha of the time; 'per_confirmation': every confirmation at alpha "
        "(no control across cycles).")
    first_share: float = Field(default=0.8, gt=0, le=1, description="Share of alpha the first confirmation "
                               "against a current prompt may spend (error_control: spending).")
    spectrum_margin: float = Field(default=0.0, ge=0, le=1, description="A spectrum blocks promotion when it is "
                                   "shown to get worse by more than this (score units; 0: shown worse at all).")
    spectrum_alpha: float = Field(default=0.06, gt=0, lt=0.5, description="Level of each spectrum's one-sided "
                                  "harm test (a guard: a false alarm only costs power).")
    cluster_field: str | None = Field(default=None, description="The dataset field whose cases are not "
                                      "independent evidence and form one cluster in the confirmation test: "
                                      "'template', 'spectrum' or 'inputs.<key>'; default: every case is its own "
                                      "cluster.")
    max_calls: int | None = Field(default=None, ge=1, description="Hard cap on paid calls of one optimization.")
    max_cost_usd: float | None = Field(default=None, gt=0, description="Hard cap on the cost of one optimization.")
    per_model_prompts: bool = Field(default=False, description="Optimize one prompt per model instead of one "
                                    "shared prompt.")

    @field_validator("cluster_field")
    @classmethod
    def _cluster_field(cls, v: str | None) -> str | None:
        if v is None or v in ("template", "spectrum") or (v.startswith("inputs.") and len(v) > len("inputs.")):
            return v
        raise ValueError(f"{v!r} is not a case field to cluster by: use 'template', 'spectrum' or 'inputs.<key>'")


def _compiles(patterns: list[str]) -> list[str]:
    import re

    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"item {i} ({pattern!r}) is not a valid regular expression: {exc}") from None
    return patterns


class TargetConfig(_Strict):
    """Where a deployment writes the production prompt: one entry of `deployment.targets`."""

    kind: str = Field(description="'file' (writes the prompt as JSON to a path, atomically, with backups), "
                      "'webhook' (POSTs it to the application's reload endpoint) or 'langsmith' (pushes it to "
                      "the LangSmith prompt hub with a tag; skipped without credentials).")
    name: str | None = Field(default=None, description="A name for reports and history (default: the kind); "
                             "unique within the pipeline.")
    options: dict[str, Any] = Field(default_factory=dict, description="The kind's options; see "
                                    "docs/deployment.md (e.g. `path` for 'file', `url` for 'webhook').")

    @property
    def label(self) -> str:
        return self.name or self.kind


class ContentRules(_Strict):
    """The content stage: what a deployable prompt may and must contain (system + template together)."""

    max_chars: int = Field(default=20000, ge=1, description="Longest allowed prompt (system + template), chars.")
    min_chars: int = Field(default=1, ge=0, description="Shortest allowed prompt, chars.")
    forbid_secrets: bool = Field(default=True, description="Refuse strings that look like credentials (API keys, "
                                 "private keys, tokens, passwords).")
    required_sections: list[str] = Field(default_factory=list, description="Regular expressions "
                                         "(case-insensitive) that must each match somewhere in the prompt.")
    banned_patterns: list[str] = Field(default_factory=lambda: [r"\bTODO\b", r"\bFIXME\b", r"lorem ipsum"],
                                       description="Regular expressions (case-insensitive) that must not match.")

    @field_validator("required_sections", "banned_patterns")
    @classmethod
    def _valid_patterns(cls, v: list[str]) -> list[str]:
        return _compiles(v)

    @model_validator(mode="after")
    def _lengths(self) -> "ContentRules":
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class IntegrationConfig(_Strict):
    """The integration stage: a smoke evaluation of the version on every configured model."""

    cases_per_spectrum: int = Field(default=2, ge=1, le=50, description="Cases per spectrum in the smoke run.")
    max_format_error_rate: float = Field(default=0.05, ge=0, le=1, description="Share of smoke answers allowed "
                                         "to miss the `format` scorer's shape (score 0). Provider errors are "
                                         "never allowed.")


class QualityRules(_Strict):
    """The quality stage: overrides of the rules the optimization evidence must satisfy (default: the
    pipeline's `optimization` settings and the `warning` threshold)."""

    min_quality: float | None = Field(default=None, ge=0, le=100, description="Lowest overall quality (points) "
                                      "of the version on the serving models; default the `warning` threshold.")
    min_effect: float | None = Field(default=None, ge=0, le=1, description="Smallest paired improvement "
                                     "(score units); default `optimization.min_effect`.")
    spectrum_margin: float | None = Field(default=None, ge=0, le=1, description="How much worse any spectrum may "
                                          "get (score units); default `optimization.spectrum_margin`.")
    alpha: float | None = Field(default=None, gt=0, lt=0.5, description="Significance level; default "
                                "`optimization.alpha`.")
    require_current_baseline: bool = Field(default=True, description="The evidence must compare the version "
                                           "against the prompt now in production (not an older one).")


class GuardrailConfig(_Strict):
    """Limits that roll a canary back at once (each optional)."""

    max_error_rate: float | None = Field(default=0.05, ge=0, le=1, description="Treatment error-rate ceiling.")
    max_error_rate_increase: float | None = Field(default=0.02, ge=0, le=1, description="Treatment minus "
                                                  "control error rate ceiling.")
    max_p95_latency_ms: float | None = Field(default=None, gt=0, description="Treatment p95 latency ceiling, ms.")
    max_p95_latency_increase_ms: float | None = Field(default=None, gt=0, description="Treatment minus control "
                                                      "p95 latency ceiling, ms.")
    min_requests: int = Field(default=20, ge=1, description="Treatment requests before the guardrails apply.")


class CanaryConfig(_Strict):
    """The canary: a traffic split schedule and the sequential test that ends it."""

    schedule: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0], min_length=2,
                                  description="Percent of requests served the new version, step by step; "
                                  "strictly increasing, ending at 100 (the promotion).")
    step_min_requests: int = Field(default=50, ge=1, description="Treatment requests seen at a step before the "
                                   "split moves to the next one (never to 100: that takes a promote decision).")
    look_size: int = Field(default=200, ge=1, description="Requests between two looks of the canary flow "
                           "(simulated traffic sends this many per look).")
    look_interval_seconds: float = Field(default=60.0, gt=0, description="Wait between looks when watching "
                                         "real traffic.")
    max_looks: int = Field(default=500, ge=1, description="Looks before a watching flow gives up (the canary "
                           "stays running).")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Chance of promoting a version that is no better "
                         "(and of a guardrail rolling back one that keeps its limits), however often the canary looks.")
    alpha_harm: float = Field(default=0.15, gt=0, lt=0.5, description="Chance of rolling back, for harm, a version "
                              "that is no worse (looser than alpha: rolling back costs only time).")
    min_effect: float = Field(default=0.03, gt=0, le=1, description="Smallest improvement (score units) worth "
                              "detecting: the canary's horizon gives `power` at it. Promotion needs evidence that the "
                              "new version is better.")
    power: float = Field(default=0.9, gt=0.5, lt=1, description="Chance of promoting a version better by "
                         "`min_effect` before the horizon; sets the horizon.")
    max_requests: int | None = Field(default=None, ge=10, description="Cap the canary at this many requests "
                                     "(default: as many as `power` needs; the plan states the power the cap gives).")
    min_per_arm: int = Field(default=20, ge=2, description="Scored requests per arm before quality decides.")
    mode: Literal["split", "shadow"] = Field(default="split", description="'split': the new version serves the "
                                             "schedule's share of requests; 'shadow': production serves every "
                                             "request and the new version also answers `shadow_pct` percent of "
                                             "them, unserved, for a paired comparison (see docs/deployment.md).")
    shadow_pct: float = Field(default=10.0, gt=0, le=100, description="Shadow mode: percent of requests the new "
                              "version also answers.")
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: list[float]) -> list[float]:
        if any(not 0 < p <= 100 for p in v):
            raise ValueError("every step must be a percentage in (0, 100]")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("steps must be strictly increasing")
        if v[-1] != 100:
            raise ValueError("the last step must be 100 (full rollout)")
        return v


class DeploymentConfig(_Strict):
    """How a pipeline's prompt reaches production: targets, the four validation stages and the canary."""

    targets: list[TargetConfig] = Field(default_factory=list, description="Where the production prompt is "
                                        "written; a deployment succeeds on all of them or on none.")
    variables: list[str] | None = Field(default=None, description="The variables the application supplies "
                                        "when it renders the prompt; default: the configured template's.")
    serving_models: list[str] | None = Field(default=None, description="Models (from the pipeline's `models`) "
                                             "that serve production traffic; default: all of them.")
    content: ContentRules = Field(default_factory=ContentRules)
    integration: IntegrationConfig = Field(default_factory=IntegrationConfig)
    quality: QualityRules = Field(default_factory=QualityRules)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    lock_lease_seconds: float = Field(default=900.0, gt=0, description="How long a deployment may hold the "
                                      "pipeline's deployment lock before another may take it over.")


# -- results suite expectations (pipelines.<name>.quality) -------------------------------------------------------

RESULT_EXPECTATION_COLUMNS = ("overall", "latency_ms")  # besides the pipeline's scorer names


class ResultsExpectation(_Strict):
    """One expectation the results suite adds: the column's values lie in [min, max] on at least `mostly`
    of the rows that have a value (errored rows have none)."""

    column: str = Field(description="A scorer of the pipeline (its score, 0–1), `overall` (0–1) or `latency_ms`.")
    min: float | None = Field(default=None, description="Lowest value allowed (inclusive).")
    max: float | None = Field(default=None, description="Highest value allowed (inclusive).")
    mostly: float = Field(default=1.0, gt=0, le=1, description="Share of the rows with a value that must lie "
                          "in [min, max].")

    @model_validator(mode="after")
    def _bounds(self) -> "ResultsExpectation":
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


class ResultsQualityConfig(_Strict):
    """The pipeline's own expectations on its results, checked by the results suite with the built-in ones."""

    results_expectations: list[ResultsExpectation] = Field(
        default_factory=list, description="Expectations on result columns, e.g. "
        "`{column: format, min: 0.95, mostly: 0.95}`; one on `format` replaces the built-in format expectation.")


class MonitorConfig(_Strict):
    """How the monitor watches a pipeline's quality and which evidence pages (see docs/monitoring.md).

    The defaults are calibrated together in bench/monitor_error_rates.py; change the detector settings only with
    that bench rerun (`--cases` for another probe size)."""

    interval_minutes: float = Field(default=30, gt=0, description="Minutes between monitor runs.")
    probe_cases: int = Field(default=150, ge=10, le=10000, description="Cases per probe run for each serving "
                             "model x spectrum: sets the run-to-run noise, hence how fast a drop is seen.")
    in_control_runs: int = Field(default=20, ge=5, le=1000, description="Runs after a reset (deployment) from "
                                 "which the baseline mean and noise are estimated; CUSUM and EWMA wait for them.")
    stale_after_minutes: float | None = Field(default=None, gt=0, description="No observation for this long is "
                                              "a stale-data finding; default 3 x interval_minutes.")
    cusum_k: float = Field(default=1.6, gt=0, description="CUSUM slack, in standard errors of a run.")
    cusum_h: float = Field(default=3.5, gt=0, description="CUSUM decision boundary, in standard errors.")
    ewma_lambda: float = Field(default=0.15, gt=0, le=1, description="EWMA weight of the newest run.")
    ewma_l: float = Field(default=3.9, gt=0, description="EWMA limit width, in the EWMA's standard deviations.")
    level_window: int = Field(default=3, ge=2, le=100, description="Runs whose mean is tested against the "
                              "thresholds (at least 2: one run never pages).")
    level_z: float = Field(default=4.0, gt=0, description="Standard errors below a threshold the window mean "
                           "must be for a sustained level breach.")
    trend_window: int = Field(default=20, ge=4, le=1000, description="Runs for the trend and variance findings "
                              "(dashboard only, never paging).")

    @property
    def stale_after(self) -> float:
        """Minutes without an observation before the data are stale."""
        return self.stale_after_minutes if self.stale_after_minutes is not None else 3 * self.interval_minutes


class LangSmithFeedbackConfig(_Strict):
    """Production outcomes read from a LangSmith project (pipelines.<name>.observe.langsmith; docs/langsmith.md):
    each root run tagged (or with metadata) naming a serving prompt version is one outcome, scored by its feedback
    `feedback_key`. Connection and key: the `langsmith:` section."""

    project: str = Field(min_length=1, description="The LangSmith project your application traces production "
                         "requests to.")
    feedback_key: str = Field(default="user_score", min_length=1, description="The feedback key whose score (in "
                              "[0, 1]; several feedbacks are averaged) is the outcome's score.")
    version_tag: str | None = Field(default="prompt:{version}", description="The tag naming the prompt version "
                                    "that served a run; {version} is the promptcycle version (prompt hash).")
    version_metadata_key: str | None = Field(default=None, description="Instead of a tag: the run metadata key "
                                             "whose value is the prompt version (sets version_tag to null).")
    model_metadata_key: str = Field(default="model", description="Run metadata key naming the serving model; "
                                    "without it, a run goes to the one serving model its version serves.")
    settle_minutes: float = Field(default=0.0, ge=0, le=1440, description="Read runs only once they are this old: "
                                  "feedback given later than this is not seen (each run is read once).")

    @model_validator(mode="after")
    def _one_version_marker(self) -> "LangSmithFeedbackConfig":
        if self.version_metadata_key is not None and "version_tag" not in self.model_fields_set:
            self.version_tag = None
        if (self.version_tag is None) == (self.version_metadata_key is None):
            raise ValueError("name the prompt version by exactly one of version_tag and version_metadata_key")
        if self.version_tag is not None and "{version}" not in self.version_tag:
            raise ValueError("version_tag must contain {version}, e.g. 'prompt:{version}'")
        return self


class ObservationConfig(_Strict):
    """Where the monitor's observations come from (pipelines.<name>.observe; see docs/monitoring.md, Observations)."""

    min_production_outcomes: int = Field(default=30, ge=1, description="Production outcomes of one serving model "
                                         "x spectrum in a monitor period needed to observe it from production; "
                                         "with fewer, the period's probe observes it.")
    probe: bool = Field(default=True, description="Run the probe (the production prompt on the monitoring sample) "
                        "for series whose production feedback is thin. Off: those series get no observation and "
                        "the stale detector reports the gap.")
    probe_seed: int = Field(default=0, ge=0, description="Seed of the fixed monitoring sample's selection.")
    langsmith: LangSmithFeedbackConfig | None = Field(default=None, description="Also read production outcomes "
                                                      "from a LangSmith project's runs and their feedback.")


class HealingConfig(_Strict):
    """When a paging finding may start a healing (pipelines.<name>.healing; see docs/monitoring.md, Healing)."""

    enabled: bool = Field(default=True, description="Let the monitor start healings for this pipeline.")
    min_severity: Literal["info", "low", "medium", "high", "critical"] = Field(
        default="high", description="Findings at or above this severity ask for a healing.")
    cooldown_minutes: float = Field(default=120, ge=0, description="Least time between two healings of the "
                                    "pipeline.")
    max_concurrent: int = Field(default=3, ge=1, le=100, description="Healings running at once across all "
                                "pipelines (also the Prefect global concurrency limit `promptcycle-healing`).")
    daily_max_calls: int | None = Field(default=None, ge=1, description="Paid calls the pipeline's healings may "
                                        "spend in 24 hours; none: no cap.")
    daily_max_cost_usd: float | None = Field(default=None, gt=0, description="USD the pipeline's healings may "
                                             "spend in 24 hours; none: no cap.")
    max_calls: int | None = Field(default=None, ge=1, description="Cap on one healing's optimization calls "
                                  "(default: optimization.max_calls).")
    strategies: list[str] | Literal["auto"] = Field(
        default="auto", description="Strategies a healing's optimization runs: 'auto' (default) spends the "
        "candidate budget by what past optimizations learned in the diagnosed context (see "
        "optimization.strategies); or a list of strategy names.")
    canary_requests: int = Field(default=2000, ge=0, description="Simulated production requests the healing's "
                                 "canary looks at when the serving models are simulated (0: wait for real traffic "
                                 "and leave the canary to `promptcycle canary`).")


CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
               "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


class ScheduleConfig(_Strict):
    """When `promptcycle serve` (or `deployments apply`) runs the pipeline's phases by themselves
    (pipelines.<name>.schedules; see docs/production.md).

    The monitor's interval is `monitor.interval_minutes`, not a key here: the monitor's periods and its stale-data
    detector are computed from it, so the schedule and the periods cannot disagree."""

    timezone: str = Field(default="UTC", description="IANA time zone the cron schedules are read in, e.g. "
                          "Europe/Paris (daylight saving time is followed).")
    baseline: str | None = Field(default=None, description="When to re-baseline: a 5-field cron expression "
                                 "(minute hour day month weekday, e.g. '0 2 * * *' nightly at 02:00) or @daily, "
                                 "@hourly …; none: the baseline is not scheduled.")
    monitor: bool = Field(default=True, description="Run one pass of the loop (the `cycle` deployment: the monitor "
                          "and the healings it decides) every `monitor.interval_minutes`; false: not scheduled.")
    canary_minutes: float | None = Field(default=5.0, gt=0, description="Minutes between two looks at a running "
                                         "canary (the `canary` deployment; with no canary running a look ends at "
                                         "once, as `NoCanary`); none: not scheduled.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone such as UTC, Europe/Paris or America/New_York") from None
        return v

    @field_validator("baseline")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        expression = CRON_MACROS.get(v.strip().lower(), v.strip())
        problem = None
        if len(expression.split()) != 5:
            problem = f"{len(expression.split())} fields"
        else:
            from cronsim import CronSim, CronSimError

            try:
                CronSim(expression, datetime(2026, 1, 1))
            except CronSimError as exc:
                problem = str(exc).lower().replace("bad ", "a bad ")
        if problem:
            raise ValueError(f"expected a cron expression of 5 fields (minute hour day month weekday, e.g. "
                             f"'0 2 * * *') or one of {', '.join(CRON_MACROS)}; this one has {problem}")
        return expression


# -- alerts (top level and pipelines.<name>.alerts) --------------------------------------------------------------

AlertSeverity = Literal[  # ordered as in promptcycle/alerts/policy.py
    "info", "low", "medium", "high", "critical"]


class AlertChannelConfig(_Strict):
    """One channel pages go to: an entry of `alerts.channels`."""

    kind: str = Field(description="'console', 'file', 'webhook', 'email', 'prefect_notification' or "
                      "'prefect_event' (see docs/monitoring.md, Alerts).")
    name: str | None = Field(default=None, description="A name for the delivery history (default: the kind); "
                             "unique within the list.")
    min_severity: AlertSeverity = Field(default="info", description="Pages below this severity skip the channel.")
    escalation_only: bool = Field(default=False, description="Receive only escalations (and the recovery of an "
                                  "escalated alert): the extra channel an unattended alert reaches.")
    options: dict[str, Any] = Field(default_factory=dict, description="The kind's options (e.g. `url` for "
                                    "'webhook', `path` for 'file', `block` for 'prefect_notification').")

    @property
    def label(self) -> str:
        return self.name or self.kind


class AlertEscalationConfig(_Strict):
    """When an open alert nobody acknowledged goes up a severity and reaches the escalation channels."""

    after_minutes: float | None = Field(default=None, gt=0, description="Escalate an unacknowledged alert this "
                                        "long after its first page, and again after as long each time; "
                                        "none: only explicit escalation (e.g. healing found no fix).")
    steps: int = Field(default=1, ge=1, le=4, description="Severities an escalation adds (capped at critical).")


class AlertDeliveryConfig(_Strict):
    """How one delivery pass retries a channel that is down (later passes retry again)."""

    attempts_per_pass: int = Field(default=3, ge=1, le=20, description="Attempts per delivery in one pass.")
    backoff_seconds: float = Field(default=1.0, ge=0, description="Base of the exponential back-off between them.")
    max_backoff_seconds: float = Field(default=30.0, ge=0, description="Cap on one back-off wait.")
    lease_seconds: float = Field(default=300.0, gt=0, description="How long a pass holds the deliveries it "
                                 "claimed before another pass may take them over (a crashed pass).")


class AlertsConfig(_Strict):
    """Alerting: channels, the cooldown, re-notification and escalation (top level; a pipeline's own
    `alerts:` overrides the keys it sets)."""

    channels: list[AlertChannelConfig] = Field(
        default_factory=lambda: [AlertChannelConfig(kind="console")],
        description="Where pages go; default one console channel (stderr).")
    cooldown_minutes: float = Field(default=15.0, ge=0, description="Least time between two pages of one key "
                                    "(pipeline, model, spectrum, detector); a rise in severity pages at once.")
    renotify_minutes: float | None = Field(default=None, gt=0, description="Page again while an unacknowledged "
                                           "alert stays out of control this long after its last page; none: "
                                           "an alert pages once (plus rises, escalations and its recovery).")
    escalation: AlertEscalationConfig = Field(default_factory=AlertEscalationConfig)
    delivery: AlertDeliveryConfig = Field(default_factory=AlertDeliveryConfig)


def effective_alerts(config: "PromptcycleConfig", pipeline: str) -> AlertsConfig:
    """The top-level `alerts:` with the keys the pipeline's own `alerts:` sets laid over it."""
    top = config.alerts
    own = config.pipeline(pipeline).alerts
    if own is None:
        return top
    return top.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})


class DriftConfig(_Strict):
    """One simulated drift of the built-in simulator (promptcycle.sim.drift; docs/simulator.md). The model
    and spectrum names and the size's range are checked with the other names (promptcycle.catalog)."""

    kind: Literal["skill_loss", "field_omission", "question_mix", "latency", "error_rate"] = Field(
        description="skill_loss / field_omission: quality on model x spectrum drops by about `size` points "
        "(field_omission is repaired by a prompt naming the fields); question_mix: the spectrum's share of "
        "traffic is multiplied by `size`; latency: latency x (1 + size); error_rate: a share `size` of "
        "requests gets a simulated 5xx.")
    model: str | None = Field(default=None, description="Simulated model name (e.g. sim-small); default: all.")
    spectrum: str | None = Field(default=None, description="Spectrum it affects (required for skill_loss, "
                                 "field_omission, question_mix); default: all.")
    size: float = Field(description="How much (see `kind`).")
    start_after_calls: int | None = Field(default=None, ge=0, description="Active once this many calls were "
                                          "served by the simulated world.")
    start_at: datetime | None = Field(default=None, description="Active from this time (UTC if no zone).")

class SimulationConfig(_Strict):
    """The built-in simulator's scenario: everything here is simulated."""

    drifts: list[DriftConfig] = Field(default_factory=list, description="Simulated drifts, each from its start.")



class PipelineConfig(_Strict):
    description: str = ""
    prompt: PromptConfig
    models: list[str] = Field(min_length=1, description="Names from the top-level `models`.")
    dataset: DatasetConfig
    scorers: dict[str, dict[str, Any]] = Field(
        min_length=1, description="Scorer name -> options (every scorer takes `weight`).")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    repeats: int = Field(default=1, ge=1, le=100, description="Calls per model x case.")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="Results suite ceiling on terminal errors.")
    quality: ResultsQualityConfig = Field(default_factory=ResultsQualityConfig)
    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    observe: ObservationConfig = Field(default_factory=ObservationConfig)
    healing: HealingConfig = Field(default_factory=HealingConfig)
    schedules: ScheduleConfig = Field(default_factory=ScheduleConfig, description="When `promptcycle serve` runs "
                                      "the phases by themselves.")
    alerts: AlertsConfig | None = Field(default=None, description="This pipeline's alerting; keys set here "
                                        "override the top-level `alerts:`.")
    langsmith: LangSmithConfig | None = Field(default=None, description="This pipeline's LangSmith settings; keys "
                                              "set here override the top-level `langsmith:`.")

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("model names must be distinct")
        return v


class ApiConfig(_Strict):
    """`promptcycle api`, the HTTP API applications call (docs/api.md)."""

    token_block: str | None = Field(default=None, description="Name of a Prefect Secret block holding the bearer "
                                    "token applications must send; it wins over the PROMPTCYCLE_API_TOKEN "
                                    "environment variable.")

    @field_validator("token_block")
    @classmethod
    def _block_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v):
            raise ValueError("expected the name of a Prefect block: lowercase letters, digits and dashes")
        return v


class PromptcycleConfig(_Strict):
    providers: dict[str, ProviderConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)
    pipelines: dict[str, PipelineConfig] = Field(min_length=1)
    store: str = Field(default="promptcycle.duckdb", description="Default DuckDB file (relative to pipelines.yaml).")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Alerting of every pipeline.")
    simulation: SimulationConfig = Field(default_factory=SimulationConfig,
                                         description="Simulated drifts of the built-in simulator.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="The HTTP API for applications.")
    langsmith: LangSmithConfig = Field(default_factory=LangSmithConfig, description="The optional connection to "
                                       "LangSmith (datasets, run mirroring, production feedback).")

    # Where the config was read from; relative paths in it resolve against this directory.
    source_path: Path | None = Field(default=None, exclude=True)

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(self.pipelines))}",
                              file=str(self.source_path) if self.source_path else None, path="pipelines",
                              found=name, expected="a pipeline name") from None

    def resolve_path(self, value: str | Path) -> Path:
        p = Path(value)
        if p.is_absolute() or self.source_path is None:
            return p
        return self.source_path.parent / p


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _from_validation_error(exc: ValidationError, file: str) -> ConfigError:
    lines = []
    first = None
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _dotted(loc)
        first = first or path
        if err["type"] == "extra_forbidden":
            # The value is not echoed: a misplaced key may hold a secret.
            lines.append(f"{path}: unknown key (expected one of the documented keys; see docs/configuration.md)")
        elif err["type"] == "missing":
            lines.append(f"{path}: missing required key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {msg} (found {_describe(err['input'])})")
    message = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
    return ConfigError(f"invalid configuration: {message}", file=file, path=None, found=None,
                       expected=None)


# libyaml's parser when PyYAML was built with it (its wheels are): the same documents, ~10x faster than the
# pure-Python one, on every command's path to its first call.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, file: str, loader_class: type = _YAML_LOADER) -> Any:
    """The document, parsed once: its node tree is checked for repeated keys, then constructed."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        _check_duplicate_keys(node, file)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _check_duplicate_keys(node: yaml.Node | None, file: str, path: str = "") -> None:
    """YAML lets a repeated key silently replace the first one; in pipelines.yaml that hides a mistake."""
    stack = [(node, path)]
    seen_nodes: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is None or key == "<<":
                    continue
                child = f"{path}.{key}" if path else key
                if key in first_line:
                    raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                                      f"{first_line[key]}); YAML would keep only the last one", file=file,
                                      path=child, found=key, expected="each key once per mapping")
                first_line[key] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}.{i}") for i, item in enumerate(node.value)]


def parse_config(path: str | Path = DEFAULT_CONFIG_PATH) -> PromptcycleConfig:
    """Read pipelines.yaml and validate it into the models; raise ConfigError on any problem.

    Names that refer to registries (scorers, strategies, target kinds, simulated models) and to other
    sections are checked by `promptcycle.catalog.load_config`, which every caller uses.
    """
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found (pass --config PATH, or run from the directory holding pipelines.yaml)",
                          file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", file=file) from None
    try:
        data = _load_yaml(text, file)
    except yaml.YAMLError as exc:
        error = exc
        try:  # the pure-Python parser's words for it: the same place, more said ("found character '\t' …")
            _load_yaml(text, file, yaml.SafeLoader)
        except yaml.YAMLError as detailed:
            error = detailed
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"not valid YAML: {where}{problem}", file=file) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, found {type(data).__name__}", file=file)
    try:
        cfg = PromptcycleConfig.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, file) from None
    cfg.source_path = path.resolve()
    return cfg

