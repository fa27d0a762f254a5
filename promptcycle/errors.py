"""The one exception tree of promptcycle.

    PromptcycleError
    ├── ConfigError                 pipelines.yaml is wrong: file, dotted path, found, expected
    ├── DatasetError                a dataset file cannot be read or parsed
    ├── DataQualityError            a Great Expectations suite failed (carries the readable report)
    ├── ProviderError               a model provider call failed (status, retry_after)
    │   ├── RetryableProviderError  worth another attempt
    │   │   ├── RateLimitError      HTTP 429
    │   │   ├── ServerError         HTTP 5xx
    │   │   ├── ProviderTimeoutError
    │   │   ├── MalformedResponseError
    │   │   ├── ProviderConnectionError
    │   │   ├── CircuitOpenError   the provider's breaker is open
    │   │   └── RetryCellError      most of a cell failed retryably: retry the cell (non-final attempts only)
    │   └── FatalProviderError      not worth retrying (auth, bad request, unknown model)
    │       ├── ResponseTooLargeError   the answer's body exceeded the provider's max_response_bytes
    │       └── ProviderCheckError      a provider or model failed the check made before any paid call
    ├── StoreError                  the metrics store failed
    │   └── StorePathError          the store path cannot hold a store (a directory, not DuckDB, unwritable)
    ├── RunFailedError              a run could not finish (it stays resumable)
    ├── PipelineBusyError           another process is already spending on this pipeline
    ├── BudgetExceededError         a call or cost cap was reached
    ├── GateError                   a deployment gate refused
    ├── DeploymentError             a deployment cannot go ahead as asked
    ├── DeploymentConflictError     another deployment of the pipeline is under way
    ├── TargetError                 a deployment target could not be written or restored
    ├── ServingError                no prompt can be served, or an outcome cannot be recorded
    ├── TriggerError                a phase's Prefect deployment could not be started (status: 404, 422, 503)
    ├── LocalServerError            Prefect's local server could not be started
    ├── LangSmithError              a LangSmith request was refused (auth, bad request, conflict)
    │   └── LangSmithUnavailableError   LangSmith is unreachable, too slow, or answered 429 / 5xx
    └── AlertDeliveryError          an alert channel could not deliver a page (retryable, retry_after)

Lookups of a name keep the builtin bases callers catch them by:

    KeyError    └── UnknownNameError        a name is not in a registry (the message lists the known names)
    LookupError └── UnknownSimModelError    a model name is not one of the simulator's models

`is_retryable(exc)` is the single predicate that the client's retry loop and Prefect's
`retry_condition_fn` both use.
"""

from __future__ import annotations

__all__ = [
    "PromptcycleError",
    "ConfigError",
    "DatasetError",
    "DataQualityError",
    "ProviderError",
    "RetryableProviderError",
    "RateLimitError",
    "ServerError",
    "ProviderTimeoutError",
    "MalformedResponseError",
    "ProviderConnectionError",
    "CircuitOpenError",
    "RetryCellError",
    "FatalProviderError",
    "ResponseTooLargeError",
    "ProviderCheckError",
    "StoreError",
    "StorePathError",
    "RunFailedError",
    "PipelineBusyError",
    "BudgetExceededError",
    "GateError",
    "DeploymentError",
    "DeploymentConflictError",
    "TargetError",
    "ServingError",
    "TriggerError",
    "LocalServerError",
    "LangSmithError",
    "LangSmithUnavailableError",
    "UnknownNameError",
    "UnknownSimModelError",
    "AlertDeliveryError",
    "is_retryable",
]


class PromptcycleError(Exception):
    """Base of every error promptcycle raises on purpose."""


class ConfigError(PromptcycleError):
    """A configuration value is missing, unknown or invalid.

    The message names the file, the dotted YAML path, what was found and what was expected.
    """

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 found: object = None, expected: str | None = None):
        self.file = file
        self.path = path
        self.found = found
        self.expected = expected
        parts = []
        if file:
            parts.append(str(file))
        if path:
            parts.append(path)
        location = ": ".join(parts)
        super().__init__(f"{location}: {message}" if location else message)


class DatasetError(PromptcycleError):
    """A dataset file cannot be read or a row cannot be parsed."""


class DataQualityError(PromptcycleError):
    """A data-quality suite failed; `report` holds the readable summary."""

    def __init__(self, message: str, report: object = None):
        self.report = report
        super().__init__(message)


class ProviderError(PromptcycleError):
    """A call to a model provider failed; `attempts` is how many requests it sent (the client sets it)."""

    attempts: int = 0

    def __init__(self, message: str, *, provider: str | None = None, status: int | None = None,
                 retry_after: float | None = None):
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)

    @property
    def kind(self) -> str:
        """A short stable name for the store's `error_kind` column."""
        return type(self).__name__


class RetryableProviderError(ProviderError):
    """A provider failure that another attempt may fix."""


class RateLimitError(RetryableProviderError):
    """HTTP 429; `retry_after` holds the server's Retry-After in seconds when given."""


class ServerError(RetryableProviderError):
    """HTTP 5xx."""


class ProviderTimeoutError(RetryableProviderError):
    """The request did not complete within the configured timeout."""


class MalformedResponseError(RetryableProviderError):
    """The body was not a valid chat-completions response."""


class ProviderConnectionError(RetryableProviderError):
    """The connection could not be made or was dropped."""


class CircuitOpenError(RetryableProviderError):
    """The provider's circuit breaker is open; `retry_after` is the time until it half-opens."""


class RetryCellError(RetryableProviderError):
    """Most of a cell failed with retryable provider errors: retry the cell later.

    Raised only on non-final attempts; what succeeded is already stored.
    """


class FatalProviderError(ProviderError):
    """A provider failure that retrying will not fix (401, 403, 400, 404 …)."""


class ResponseTooLargeError(FatalProviderError):
    """The answer's body was larger than the provider's `max_response_bytes`; reading stopped at the cap."""


class ProviderCheckError(FatalProviderError):
    """A provider or model failed the check made before a run spends anything (wrong key, unknown
    model, unreachable endpoint); `model` names the pipeline model checked."""

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None,
                 status: int | None = None):
        self.model = model
        super().__init__(message, provider=provider, status=status)


class StoreError(PromptcycleError):
    """The metrics store could not be read or written."""


class StorePathError(StoreError):
    """The store path is bad input: a directory, a file that is not a DuckDB database, a place that cannot
    be written, or (for read-only commands) a store that does not exist. Retrying will not help."""


class RunFailedError(PromptcycleError):
    """A run could not finish; what it recorded stays, and re-running the same command resumes it."""


class PipelineBusyError(PromptcycleError):
    """Another live process holds the pipeline's lease (a run of it is under way); nothing was started."""


class BudgetExceededError(PromptcycleError):
    """A hard cap on calls or cost was reached."""


class GateError(PromptcycleError):
    """A deployment gate refused a prompt version."""


class DeploymentError(PromptcycleError):
    """The deployment cannot go ahead as asked (nothing to deploy or roll back to, already in production …)."""


class DeploymentConflictError(PromptcycleError):
    """Another deployment (or canary conclusion) of the pipeline is under way, or a canary is running."""


class TargetError(PromptcycleError):
    """A target could not be written (or restored). `outcomes` says what every target did."""

    def __init__(self, message: str, outcomes: object = ()):
        self.outcomes = list(outcomes)  # type: ignore[call-overload]
        super().__init__(message)


class ServingError(PromptcycleError):
    """No prompt can be served (nothing deployed, no store), or an outcome cannot be recorded."""


class TriggerError(PromptcycleError):
    """A phase's Prefect deployment could not be started. `status` is the HTTP status the API answers with:
    404 no such deployment, 422 parameters the deployment refused, 503 no Prefect server to ask."""

    def __init__(self, message: str, *, status: int = 503):
        self.status = int(status)
        super().__init__(message)


class LocalServerError(PromptcycleError):
    """Prefect's local server could not be started."""


class UnknownNameError(KeyError):
    """A name is not registered; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence
        return self.args[0]


class UnknownSimModelError(LookupError):
    """The model name is not one of SIM_MODELS."""


class LangSmithError(PromptcycleError):
    """A LangSmith request was refused; the message never holds the API key."""


class LangSmithUnavailableError(LangSmithError):
    """LangSmith could not be reached in time or answered 429 / 5xx: try again later."""


class AlertDeliveryError(PromptcycleError):
    """An alert channel could not deliver a page; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None):
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message)


def is_retryable(exc: BaseException) -> bool:
    """True when another attempt at the same call may succeed."""
    return isinstance(exc, RetryableProviderError)
