"""Everything a phase needs about one pipeline: its config, its cases and their splits.

    ref = PipelineRef(config_path="pipelines.yaml", pipeline="customer-insights", limit=15)  # what tasks receive
    ctx = ref.load()                                                                          # a PipelineContext

Loaded once per process and cached by (config file, modification time, pipeline, limit), so the many
cell tasks of a flow share one parse of pipelines.yaml and one load of the dataset.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from promptcycle.catalog import load_config
from promptcycle.config import PipelineConfig, PromptcycleConfig
from promptcycle.datasets.cases import Case, cluster_of
from promptcycle.datasets.loaders import dataset_hash, limit_cases, load_cases
from promptcycle.datasets.splits import assign_splits
from promptcycle.errors import ConfigError
from promptcycle.prompts import PromptTemplate
from promptcycle.store.remote import open_store

__all__ = ["PipelineRef", "PipelineContext", "load_pipeline", "resolve_store_path", "check_prompt_inputs"]


class PipelineRef(BaseModel):
    """Which pipeline a task works on: the config file, the pipeline's name, the store (None: the config's
    `store`) and the case limit (None: every case).

    Names only — frozen, hashable and serialisable — so tasks take it instead of live objects, and Prefect
    hashes it like the four parameters it stands for (task inputs are what cache keys are made of)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_path: str
    pipeline: str
    store_path: str | None = None
    limit: int | None = None

    def load(self) -> PipelineContext:
        """The pipeline's config, cases and splits (`load_pipeline`, cached per process)."""
        return load_pipeline(self.config_path, self.pipeline, limit=self.limit, store=self.store_path)


@dataclass(frozen=True)
class PipelineContext:
    config: PromptcycleConfig
    name: str
    pipeline: PipelineConfig
    all_cases: list[Case]  # the whole dataset (splits are assigned over it)
    cases: list[Case]  # the cases this run evaluates (after --limit)
    splits: dict[str, str]  # case id -> train / dev / test
    dataset_key: str  # identifies the dataset whose splits are recorded in the store
    dataset_hash: str
    store_path: Path
    _rendered: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def prompt(self) -> PromptTemplate:
        return self.pipeline.prompt.to_template()

    @property
    def weights(self) -> dict[str, float]:
        return {name: float((opts or {}).get("weight", 1.0)) for name, opts in self.pipeline.scorers.items()}

    @property
    def configured_cases(self) -> list[Case]:
        """Every case of the configured spectrums (other spectrums in the file are not this pipeline's)."""
        wanted = set(self.pipeline.dataset.spectrums)
        return [c for c in self.all_cases if c.spectrum in wanted]

    def messages(self, prompt: PromptTemplate, case: Case) -> list[dict[str, str]]:
        """The chat messages of `case` under `prompt`, rendered once per process: the cells of every
        model share them (rendering a record as indented JSON is the costly part). Do not mutate."""
        key = (prompt, case.id)  # case ids are unique within the pipeline's dataset
        messages = self._rendered.get(key)
        if messages is None:
            messages = self._rendered[key] = prompt.render(case.inputs)
        return messages

    def cases_of(self, spectrum: str) -> list[Case]:
        return [c for c in self.cases if c.spectrum == spectrum]

    @property
    def simulated(self) -> bool:
        """Whether every provider the pipeline calls (models and LLM judges) is the built-in simulator."""
        return all(self.config.providers[p].kind == "simulator" for p in self.providers_used())

    def providers_used(self) -> list[str]:
        names = {self.config.models[m].provider for m in self.pipeline.models}
        for opts in self.pipeline.scorers.values():
            judge = (opts or {}).get("model")
            if judge:
                names.add(self.config.models[judge].provider)
        return sorted(names)


def resolve_store_path(config: PromptcycleConfig, store: str | Path | None) -> Path:
    """`--store` wins; otherwise the config's `store`, relative to pipelines.yaml."""
    return Path(store).resolve() if store else config.resolve_path(config.store)


def check_prompt_inputs(pipe: PipelineConfig, cases: list[Case], *, file: str, pipeline: str) -> None:
    """Every placeholder of the prompt has a value in every case, before any call: a missing one would fail
    each of those calls at run time. A `{name}` in single braces where the cases provide `name` is a
    placeholder written with one brace too few."""
    from promptcycle.prompts import line_of, single_brace_names, unclosed_brace_names

    prompt = pipe.prompt.to_template()
    provided = sorted({key for case in cases for key in case.inputs})
    source = pipe.dataset.source
    for p in prompt.placeholders():
        lacking = [c.id for c in cases if p.name not in c.inputs]
        if lacking:
            text = getattr(pipe.prompt, p.part)
            raise ConfigError(
                f"placeholder {{{{{p.name}}}}} (line {line_of(text, p.position)} of the {p.part}) has no value in "
                f"{len(lacking)} of {len(cases)} cases of {source} (first: {lacking[0]!r}); the cases provide: "
                f"{', '.join(provided) or '(nothing)'}", file=file, path=f"pipelines.{pipeline}.prompt.{p.part}",
                found=p.name, expected=f"a field every case of {source} provides")
    for part in ("system", "template"):
        text = getattr(pipe.prompt, part)
        for offset, name in single_brace_names(text):
            if name in provided:
                raise ConfigError(
                    f"{{{name}}} at line {line_of(text, offset)} of the {part} has single braces, so it stays "
                    f"literal text; placeholders are {{{{{name}}}}}", file=file,
                    path=f"pipelines.{pipeline}.prompt.{part}", found=f"{{{name}}}", expected=f"{{{{{name}}}}}")
        for offset, name in unclosed_brace_names(text):
            if name in provided:
                raise ConfigError(
                    f"{{{name} at line {line_of(text, offset)} of the {part} opens a brace that nothing closes, so "
                    f"it stays literal text; placeholders are {{{{{name}}}}}", file=file,
                    path=f"pipelines.{pipeline}.prompt.{part}", found=f"{{{name}", expected=f"{{{{{name}}}}}")


_cache: dict[tuple, PipelineContext] = {}
_loading: dict[tuple, threading.Lock] = {}
_lock = threading.Lock()


def load_pipeline(config_path: str | Path, pipeline: str, *, limit: int | None = None,
                  store: str | Path | None = None) -> PipelineContext:
    """Load config and dataset and assign splits (recorded splits in the store win)."""
    path = Path(config_path).resolve()
    stamp = path.stat().st_mtime_ns if path.exists() else None
    key = (str(path), stamp, pipeline, limit, str(store), _local_copy_stamp(path, stamp, pipeline))
    with _lock:
        if key in _cache:
            return _cache[key]
        loading = _loading.setdefault(key, threading.Lock())
    with loading:  # one load per key at a time: a second caller (another thread) waits for the first's result
        with _lock:
            if key in _cache:
                return _cache[key]
        try:
            ctx = _load_pipeline(path, pipeline, limit, store)
            with _lock:
                _cache[key] = ctx
        finally:
            with _lock:
                _loading.pop(key, None)
        return ctx


def _load_pipeline(path: Path, pipeline: str, limit: int | None, store: str | Path | None) -> PipelineContext:
    config = load_config(path)
    pipe = config.pipeline(pipeline)
    all_cases = load_cases(pipe.dataset.source, base_dir=path.parent)
    check_prompt_inputs(pipe, [c for c in all_cases if c.spectrum in set(pipe.dataset.spectrums)],
                        file=str(path), pipeline=pipeline)
    store_path = resolve_store_path(config, store)
    dataset_key = f"{pipeline}|{pipe.dataset.source}|{pipe.dataset.splits.seed}"
    recorded = open_store(store_path).get_splits(dataset_key)
    splits = assign_splits(all_cases, pipe.dataset.splits, recorded=recorded)
    configured = set(pipe.dataset.spectrums)
    cases = limit_cases([c for c in all_cases if c.spectrum in configured], limit)
    _check_cluster_field(path, pipeline, pipe.optimization.cluster_field, cases)
    ctx = PipelineContext(config=config, name=pipeline, pipeline=pipe, all_cases=all_cases, cases=cases,
                          splits=splits, dataset_key=dataset_key, dataset_hash=dataset_hash(all_cases),
                          store_path=store_path)
    return ctx


_langsmith_sources: dict[tuple, str | None] = {}


def _local_copy_stamp(path: Path, stamp: int | None, pipeline: str) -> int | None:
    """For a `langsmith:` dataset, when its local copy last changed: a fresh pull is a new dataset.
    (The source's name is read once per version of the config file.)"""
    if stamp is None:
        return None
    memo = (str(path), stamp, pipeline)
    if memo not in _langsmith_sources:
        try:
            _langsmith_sources[memo] = load_config(path).pipeline(pipeline).dataset.langsmith_dataset
        except ConfigError:
            return None  # load_pipeline raises it, with its message
    source = _langsmith_sources[memo]
    if source is None:
        return None
    from promptcycle.langsmith.datasets import snapshot_path

    copy = snapshot_path(source, path.parent)
    return copy.stat().st_mtime_ns if copy.exists() else None


def _check_cluster_field(path: Path, pipeline: str, field: str | None, cases: list[Case]) -> None:
    """`optimization.cluster_field` must name a value every case has: fail before any model call."""
    if field is None:
        return
    missing = [c.id for c in cases if cluster_of(c, field) is None]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(cases)} cases have no {field!r} to cluster by (first: case "
                          f"{missing[0]!r}); add it to the dataset or remove the setting",
                          file=str(path), path=f"pipelines.{pipeline}.optimization.cluster_field", found=field,
                          expected="a field every case has")


def fingerprint(ctx: PipelineContext, *, kind: str, repeats: int, limit: int | None, prompt_hash: str) -> str:
    """What makes two runs the same work (so a re-run resumes instead of starting over)."""
    models = {m: ctx.config.models[m].model_dump() for m in ctx.pipeline.models}
    payload = json.dumps({"kind": kind, "pipeline": ctx.name, "prompt": prompt_hash, "dataset": ctx.dataset_hash,
                          "models": models, "scorers": ctx.pipeline.scorers, "repeats": repeats, "limit": limit,
                          "spectrums": ctx.pipeline.dataset.spectrums},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
