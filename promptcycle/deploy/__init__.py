"""Production deployment: validated, gated, canaried, reversible.

    targets.py     where the production prompt is written (file, webhook, LangSmith), all or nothing
    validation.py  the syntax and content stages, and the `StageReport` every stage writes
    smoke.py       the integration stage: a smoke evaluation on every configured model
    gate.py        the quality stage (the optimization evidence) and the gate decision
    stages.py      runs one stage of a planned deployment and stores its report
    locks.py       one deployment per pipeline at a time (a lease in the store)
    release.py     deploy a version, promote or roll back a canary, roll back production
    canary.py      the canary: split schedule, outcomes per arm, one look of the sequential test
    serving.py     for the serving application: `resolve_prompt`, `log_production_result`
    traffic.py     simulated production traffic, to run a canary end to end offline
    status.py      where each pipeline stands: labels, running canary, decisions, deployments
    results.py     the typed results of the deployment and canary flows (what `--json` prints)

This package imports nothing eagerly, so that the serving application's `import
promptcycle.deploy.serving` stays light (duckdb and the standard library).
"""
