"""The catalog: every registry of promptcycle, the checks of names against them, and `load_config`.

    provider_registry()   provider kinds (openai, simulator)      promptcycle.providers
    scorer_registry()     scorers                                  promptcycle.scoring
    strategy_registry()   optimization strategies                  promptcycle.optimize.strategies
    target_registry()     deployment target kinds                  promptcycle.deploy.targets
    detector_registry()   drift and regression detectors           promptcycle.monitor.detectors
    channel_registry()    alert channel kinds                      promptcycle.alerts.channels
    sim_models()          the simulator's models                   promptcycle.sim.world

Each registry module is imported on first use (the strategies pull in pandas), so loading a configuration
imports only what its names need. `promptcycle.config` holds the models and their parsing and imports none
of these; `load_config` here parses, then checks every cross-reference, raising one `ConfigError` that
names the file, the dotted path, what was found and what was expected, before any model is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from promptcycle.config import (
    DEFAULT_CONFIG_PATH,
    RESULT_EXPECTATION_COLUMNS,
    OptimizationConfig,
    PipelineConfig,
    PromptcycleConfig,
    _describe,
    _dotted,
    parse_config,
)
from promptcycle.errors import ConfigError
from promptcycle.prompts import line_of, malformed_placeholders

if TYPE_CHECKING:
    from promptcycle.registry import Registry

__all__ = [
    "load_config",
    "check_names",
    "provider_registry",
    "scorer_registry",
    "strategy_registry",
    "target_registry",
    "detector_registry",
    "channel_registry",
    "sim_models",
]


def provider_registry() -> Registry[Any]:
    from promptcycle.providers import provider_kinds

    return provider_kinds


def scorer_registry() -> Registry[Any]:
    from promptcycle.scoring import scorers  # the registry, with the built-in scorers registered

    return scorers


def strategy_registry() -> Registry[Any]:
    from promptcycle.optimize.strategies import strategies  # the registry, with the built-in strategies

    return strategies


def target_registry() -> Registry[Any]:
    from promptcycle.deploy.targets import target_kinds  # the registry, with the built-in targets

    return target_kinds


def detector_registry() -> Registry[Any]:
    from promptcycle.monitor.detectors import detectors

    return detectors


def channel_registry() -> Registry[Any]:
    from promptcycle.alerts.channels import channel_kinds  # the registry, with the built-in channels

    return channel_kinds


def sim_models() -> dict[str, Any]:
    from promptcycle.sim.world import SIM_MODELS

    return SIM_MODELS


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> PromptcycleConfig:
    """Read and validate pipelines.yaml, names included; raise ConfigError on any problem."""
    cfg = parse_config(path)
    check_names(cfg, str(Path(path)))
    check_simulation(cfg, str(Path(path)))
    _check_alerts(cfg, str(Path(path)))
    return cfg


def check_names(cfg: PromptcycleConfig, file: str) -> None:
    """Cross-references: model -> provider, pipeline -> models, scorer names and options."""
    scorers = scorer_registry()

    for name, model in cfg.models.items():
        if model.provider not in cfg.providers:
            raise ConfigError(f"unknown provider {model.provider!r}; known: {', '.join(sorted(cfg.providers))}",
                              file=file, path=f"models.{name}.provider", found=model.provider,
                              expected="a name from `providers`")
        if cfg.providers[model.provider].kind == "simulator":
            simulated = sim_models()
            if model.model not in simulated:
                raise ConfigError(f"unknown simulated model {model.model!r}; known: {', '.join(sorted(simulated))}",
                                  file=file, path=f"models.{name}.model", found=model.model,
                                  expected="a simulated model name")
    for pname, pipe in cfg.pipelines.items():
        for i, m in enumerate(pipe.models):
            if m not in cfg.models:
                raise ConfigError(f"unknown model {m!r}; known: {', '.join(sorted(cfg.models))}",
                                  file=file, path=f"pipelines.{pname}.models.{i}", found=m,
                                  expected="a name from `models`")
        for sname, options in pipe.scorers.items():
            path = f"pipelines.{pname}.scorers.{sname}"
            if sname not in scorers:
                raise ConfigError(f"unknown scorer {sname!r}; known: {', '.join(scorers.names())}",
                                  file=file, path=path, found=sname, expected="a registered scorer")
            try:
                scorers.get(sname).Options.model_validate(options or {})
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                sub = _dotted(err["loc"])
                if err["type"] == "extra_forbidden":
                    detail, found = "unknown key", ""
                else:
                    detail, found = err["msg"].removeprefix("Value error, "), f" (found {_describe(err['input'])})"
                raise ConfigError(f"{detail}{found}", file=file,
                                  path=f"{path}.{sub}" if sub != "(top level)" else path,
                                  found=err["input"], expected=detail) from None
            judge_model = (options or {}).get("model")
            if judge_model is not None and judge_model not in cfg.models:
                raise ConfigError(f"unknown model {judge_model!r}; known: {', '.join(sorted(cfg.models))}",
                                  file=file, path=f"{path}.model", found=judge_model,
                                  expected="a name from `models`")
        _check_deployment(pname, pipe, file)
        _check_results_expectations(pname, pipe, file)
        opt = pipe.optimization
        # The default list is the built-in strategies (tests pin it); the registry is imported only for
        # names a user wrote, because importing it pulls in the diagnosis module and pandas.
        default = OptimizationConfig.model_fields["strategies"].default_factory()
        if opt.strategies != "auto" and opt.strategies != default:
            strategies = strategy_registry()
            for i, name in enumerate(opt.strategies):
                if name not in strategies:
                    raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(strategies.names())}",
                                      file=file, path=f"pipelines.{pname}.optimization.strategies.{i}", found=name,
                                      expected="a registered strategy")
        if pipe.healing.strategies != "auto":
            strategies = strategy_registry()
            for i, name in enumerate(pipe.healing.strategies):
                if name not in strategies:
                    raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(strategies.names())}",
                                      file=file, path=f"pipelines.{pname}.healing.strategies.{i}", found=name,
                                      expected="a registered strategy")
        if opt.optimizer_model is not None and opt.optimizer_model not in cfg.models:
            raise ConfigError(f"unknown model {opt.optimizer_model!r}; known: {', '.join(sorted(cfg.models))}",
                              file=file, path=f"pipelines.{pname}.optimization.optimizer_model",
                              found=opt.optimizer_model, expected="a name from `models`")
        _check_prompt_syntax(pname, pipe, file)
        _check_weights(pname, pipe, file)
        variables = pipe.prompt.to_template().variables
        if not variables:
            raise ConfigError("the prompt uses no {{variables}}, so every case would get the same prompt",
                              file=file, path=f"pipelines.{pname}.prompt.template",
                              expected="at least one {{variable}}")


def _check_results_expectations(pname: str, pipe: PipelineConfig, file: str) -> None:
    """Each results expectation names a column the results suite has: a scorer of the pipeline, or one of
    RESULT_EXPECTATION_COLUMNS."""
    known = [*pipe.scorers, *RESULT_EXPECTATION_COLUMNS]
    for i, expectation in enumerate(pipe.quality.results_expectations):
        if expectation.column not in known:
            raise ConfigError(f"unknown column {expectation.column!r} for a results expectation; known: "
                              f"{', '.join(known)}", file=file,
                              path=f"pipelines.{pname}.quality.results_expectations.{i}.column",
                              found=expectation.column, expected="a scorer of the pipeline, overall or latency_ms")


def _check_prompt_syntax(pname: str, pipe: PipelineConfig, file: str) -> None:
    """Every `{{` opens a well-formed `{{name}}`, and no `{name}}` lacks a brace."""
    for part in ("system", "template"):
        text = getattr(pipe.prompt, part)
        for offset, snippet in malformed_placeholders(text):
            raise ConfigError(f"malformed placeholder {snippet!r} at line {line_of(text, offset)} of the {part} "
                              "(expected {{name}}: two braces each side, a letter or _ first, then letters, "
                              "digits or _)", file=file, path=f"pipelines.{pname}.prompt.{part}", found=snippet,
                              expected="{{name}}")


def _check_weights(pname: str, pipe: PipelineConfig, file: str) -> None:
    """At least one scorer weighs something, or no answer could get an overall score."""
    weights = {name: float((options or {}).get("weight", 1.0)) for name, options in pipe.scorers.items()}
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"every scorer has weight 0 ({', '.join(weights)}), so no answer could get an overall "
                          "score", file=file, path=f"pipelines.{pname}.scorers", found=weights,
                          expected="at least one scorer with a weight above 0")


def _check_deployment(pname: str, pipe: PipelineConfig, file: str) -> None:
    """Deployment targets name a registered kind with valid options; serving models are the pipeline's."""
    target_kinds = target_registry()
    base = f"pipelines.{pname}.deployment"
    for i, model in enumerate(pipe.deployment.serving_models or []):
        if model not in pipe.models:
            raise ConfigError(f"serving model {model!r} is not one of the pipeline's models "
                              f"({', '.join(pipe.models)})", file=file, path=f"{base}.serving_models.{i}",
                              found=model, expected="a name from the pipeline's `models`")
    seen: set[str] = set()
    for i, target in enumerate(pipe.deployment.targets):
        path = f"{base}.targets.{i}"
        if target.kind not in target_kinds:
            raise ConfigError(f"unknown target kind {target.kind!r}; known: {', '.join(target_kinds.names())}",
                              file=file, path=f"{path}.kind", found=target.kind, expected="a target kind")
        if target.label in seen:
            raise ConfigError(f"two targets are named {target.label!r}; give each a distinct `name`",
                              file=file, path=f"{path}.name", found=target.label, expected="a unique name")
        seen.add(target.label)
        try:
            target_kinds.get(target.kind).Options.model_validate(target.options)
        except ValidationError as exc:
            raise _options_error(exc, file, f"{path}.options") from None


def _options_error(exc: ValidationError, file: str, path: str) -> ConfigError:
    """The first problem of a plug-in's `options` (a target's, an alert channel's), named by its dotted path."""
    err = exc.errors(include_url=False)[0]
    sub = _dotted(err["loc"])
    if err["type"] == "extra_forbidden":
        detail, found = "unknown key", None
    elif err["type"] == "missing":
        detail, found = "missing required key", None
    else:
        detail, found = err["msg"].removeprefix("Value error, "), err["input"]
    shown = f" (found {_describe(found)})" if found is not None else ""
    return ConfigError(f"{detail}{shown}", file=file, path=path + (f".{sub}" if sub != "(top level)" else ""),
                       found=found, expected=detail)


def _check_alerts(cfg: PromptcycleConfig, file: str) -> None:
    """Channel kinds are registered, their options valid, their names unique."""
    channel_kinds = channel_registry()

    places = [("alerts", cfg.alerts)] + [(f"pipelines.{p}.alerts", pipe.alerts) for p, pipe in cfg.pipelines.items()
                                         if pipe.alerts is not None]
    for base, alerts in places:
        seen: set[str] = set()
        for i, channel in enumerate(alerts.channels):
            path = f"{base}.channels.{i}"
            if channel.kind not in channel_kinds:
                raise ConfigError(f"unknown alert channel kind {channel.kind!r}; known: "
                                  f"{', '.join(channel_kinds.names())}", file=file, path=f"{path}.kind",
                                  found=channel.kind, expected="an alert channel kind")
            if channel.label in seen:
                raise ConfigError(f"two channels are named {channel.label!r}; give each a distinct `name`",
                                  file=file, path=f"{path}.name", found=channel.label, expected="a unique name")
            seen.add(channel.label)
            try:
                channel_kinds.get(channel.kind).Options.model_validate(channel.options)
            except ValidationError as exc:
                raise _options_error(exc, file, f"{path}.options") from None


def check_simulation(cfg: PromptcycleConfig, file: str) -> None:
    """Every simulated drift names a simulated model and spectrum, and its size is in range for its kind."""
    from promptcycle.sim.drift import drift_from
    from promptcycle.sim.world import SIM_MODELS, SPECTRUMS

    for i, drift in enumerate(cfg.simulation.drifts):
        path = f"simulation.drifts.{i}"
        if drift.model is not None and drift.model not in SIM_MODELS:
            raise ConfigError(f"unknown simulated model {drift.model!r}; known: {', '.join(SIM_MODELS)}", file=file,
                              path=f"{path}.model", found=drift.model, expected="a simulated model name")
        if drift.spectrum is not None and drift.spectrum not in SPECTRUMS:
            raise ConfigError(f"unknown spectrum {drift.spectrum!r}; known: {', '.join(SPECTRUMS)}", file=file,
                              path=f"{path}.spectrum", found=drift.spectrum, expected="a spectrum name")
        try:
            drift_from(drift)  # the drift's own checks (size ranges, a spectrum where the kind needs one)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, path=path, found=drift.size, expected="a valid drift") from None
