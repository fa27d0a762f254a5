"""What the deployment tests share: small pipelines.yaml files, candidate versions with real evidence, and a
loopback HTTP server standing in for the application's reload endpoint.

`make_candidate` plays the optimization phase's part honestly: it answers the test split with the
simulated models (in-process, `respond`), scores both prompts with the pipeline's scorers, runs the
paired test (`confirm_improvement`) and stores what the optimization flow stores — the version,
its results, a confirmation decision with `ConfirmationResult.to_dict()` as evidence, and the
`candidate` label.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from promptcycle.evaluation.context import load_pipeline
from promptcycle.prompts import PromptTemplate
from promptcycle.scoring import build_scorers, overall
from promptcycle.scoring.base import Sample
from promptcycle.sim.world import respond
from promptcycle.stats.paired import confirm_improvement
from promptcycle.store import MetricsStore
from promptcycle.store.records import DecisionRecord, PromptVersionRecord, ResultRecord

__all__ = ["REPO", "PIPE", "PROD", "NEW", "write_config", "better_prompt", "worse_prompt", "record_version",
           "serving_store", "make_candidate", "deploy_inline", "ReloadEndpoint", "reload_endpoint"]

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
PROD = PromptTemplate(system="You are an analyst.", template="{{customer}}\n{{question}}\nReply with JSON.")
NEW = PromptTemplate(system="You are an analyst.", template="{{customer}}\n{{question}}\nReply with valid JSON only.")


def write_config(tmp_path: Path, *, models: list[str] | None = None, deployment: dict[str, Any] | None = None,
                 second_pipeline: str | None = None) -> Path:
    """The repository's pipelines.yaml in tmp_path, with the deployment section (and models) replaced."""
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    if models is not None:
        pipe["models"] = models
    if deployment is not None:
        pipe["deployment"] = deployment
    if second_pipeline:
        other = data["pipelines"][second_pipeline] = json.loads(json.dumps(pipe))
        # Versions are keyed by content: another pipeline needs a prompt of its own.
        other["prompt"]["system"] += " You work for the European desk."
    data["store"] = "metrics.duckdb"
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def better_prompt(base: PromptTemplate) -> PromptTemplate:
    """The configured prompt plus an explicit format spec and grounding (simulator levers b and d)."""
    return PromptTemplate(
        system=base.system + " Only use the provided data; if a value is not in the record, say unknown.",
        template=base.template.replace("Reply with a JSON object.",
                                       "Reply with valid JSON only: keys are the field names, values raw, "
                                       "no other text."))


def worse_prompt(base: PromptTemplate) -> PromptTemplate:
    """The configured prompt without its JSON request: the simulated models answer in prose."""
    return PromptTemplate(system=base.system, template=base.template.replace("Reply with a JSON object.",
                                                                              "Answer briefly."))


def record_version(store: MetricsStore, pipeline: str, prompt: PromptTemplate, parent: str | None = None,
                   strategy: str = "manual") -> str:
    store.write_prompt_version(PromptVersionRecord(
        prompt_hash=prompt.hash, pipeline=pipeline, system=prompt.system, template=prompt.template,
        variables=prompt.variables, parent_hash=parent, strategy=strategy, rationale="written by a test",
        created_at=datetime.now(timezone.utc)))
    return prompt.hash


def serving_store(path: Path) -> MetricsStore:
    """A store at `path` with PROD in production and NEW recorded as its child (no canary yet): where the serving
    and API tests start."""
    store = MetricsStore(path)
    record_version(store, PIPE, PROD)
    record_version(store, PIPE, NEW, parent=PROD.hash)
    store.move_label(PIPE, "production", PROD.hash, actor="test", reason="initial")
    return store


def _evaluate(ctx, prompt: PromptTemplate, run_id: str, models: list[str]) -> list[ResultRecord]:
    scorers = build_scorers(ctx.pipeline.scorers)
    rows = []
    for model in models:
        mconf = ctx.config.models[model]
        for case in ctx.configured_cases:
            if ctx.splits.get(case.id) != "test":
                continue
            reply = respond(mconf.model, prompt.render(case.inputs))
            sample = Sample(case=case, output=reply.text, model=model, latency_ms=reply.latency_s * 1000,
                            latency_target_ms=mconf.latency_target_ms)
            scores = {name: s.score(sample).value for name, s in scorers.items()}
            rows.append(ResultRecord(run_id=run_id, model=model, case_id=case.id, repeat=0, spectrum=case.spectrum,
                                     split="test", prompt_hash=prompt.hash, scores=scores,
                                     overall=overall(scores, ctx.weights), simulated=True))
    return rows


def make_candidate(config_path: Path, pipeline: str, prompt: PromptTemplate, *, against: str | None = None,
                   models: list[str] | None = None, results_suite_ok: bool = True, label: bool = True) -> str:
    """Record `prompt` as a version of `pipeline` with honest confirmation evidence against `against`
    (default: the production version), as the optimization phase would; return its hash."""
    ctx = load_pipeline(config_path, pipeline)
    store = MetricsStore(ctx.store_path)
    against = against or store.get_label(pipeline, "production")
    base_record = store.get_prompt_version(against)
    base = PromptTemplate(template=base_record.template, system=base_record.system)
    version = record_version(store, pipeline, prompt, parent=against, strategy="combined")
    models = models or list(ctx.pipeline.models)
    # The optimization phase's layout: one run per confirmation arm, named after the optimization run.
    run_id = f"optimization-{pipeline}-{prompt.hash[:6]}"
    arm_run = f"{run_id}/confirm/{prompt.hash}"
    candidate_rows = _evaluate(ctx, prompt, arm_run, models)
    baseline_rows = _evaluate(ctx, base, f"{run_id}/confirm/{base.hash}", models)
    store.write_batch([], candidate_rows + baseline_rows)
    result = confirm_improvement([r.overall for r in candidate_rows], [r.overall for r in baseline_rows],
                                 [r.case_id for r in candidate_rows], spectrums=[r.spectrum for r in candidate_rows],
                                 min_effect=ctx.pipeline.optimization.min_effect, alpha=ctx.pipeline.optimization.alpha,
                                 spectrum_margin=ctx.pipeline.optimization.spectrum_margin,
                                 baseline_case_ids=[r.case_id for r in baseline_rows])
    store.write_dq_result(arm_run, "results", results_suite_ok, {"suite": "results", "success": results_suite_ok,
                                                                "n_rows": len(candidate_rows), "failures": []})
    store.write_decision(DecisionRecord(run_id=run_id, pipeline=pipeline, kind="confirmation", prompt_hash=version,
                                        baseline_hash=against, decision=result.decision, evidence=result.to_dict()))
    if label:
        store.move_label(pipeline, "candidate", version, actor="test optimization", reason=result.reason,
                         evidence=result.to_dict())
    return version


async def deploy_inline(config_path: Path, pipeline: str = PIPE, *, version: str | None = None, canary: bool = False,
                        force: bool = False, actor: str = "a test") -> dict[str, Any]:
    """What the deployment flow does, without the engine: plan, four stages, gate, release or canary."""
    from promptcycle.deploy.gate import decide_gate
    from promptcycle.deploy.locks import release_lock
    from promptcycle.deploy.release import plan_release, record_gate, release_version, start_release_canary
    from promptcycle.deploy.stages import STAGES, run_stage
    from promptcycle.evaluation.pool import close_providers

    ctx = load_pipeline(config_path, pipeline)
    store = MetricsStore(ctx.store_path)
    plan = plan_release(ctx.config, pipeline, store, version=version, canary=canary, force=force, actor=actor)
    try:
        reports, blocked = [], None
        for stage in STAGES:
            report = await run_stage(ctx, store, plan, stage, key_of=lambda name: None,
                                     skip_reason=f"not run: the {blocked} stage failed" if blocked else None)
            reports.append(report)
            if report.status == "failed" and not force and blocked is None:
                blocked = stage
        gate = decide_gate(reports, force=force)
        record_gate(store, plan, gate, reports)
        result: Any = None
        if not gate.blocked:
            result = (start_release_canary(ctx.config, store, plan, gate) if canary
                      else release_version(ctx.config, store, plan, gate))
    finally:
        await close_providers()
        release_lock(store, pipeline, plan.deployment_id)
    return {"plan": plan, "reports": {r.stage: r for r in reports}, "gate": gate, "result": result, "store": store}


class ReloadEndpoint:
    """A loopback HTTP server that records POSTs and answers with scripted statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": %s}' % (b"true" if status < 300 else b"false"))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/reload"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def bodies(self) -> list[bytes]:
        return [r["body"] for r in self.requests]


@contextmanager
def reload_endpoint(statuses: list[int] | None = None) -> Iterator[ReloadEndpoint]:
    endpoint = ReloadEndpoint(statuses)
    endpoint.thread.start()
    try:
        yield endpoint
    finally:
        endpoint.server.shutdown()
        endpoint.server.server_close()


