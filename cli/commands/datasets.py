"""`promptcycle datasets`: a pipeline's cases to and from LangSmith.

    promptcycle datasets pull --pipeline NAME     refresh the local copy of a `langsmith:` dataset source
    promptcycle datasets push --pipeline NAME     publish the pipeline's cases, with their splits, as a
                                                  LangSmith dataset (idempotent: a re-push changes nothing)

Both need a LangSmith API key (`langsmith.api_key_env`, default LANGSMITH_API_KEY, or
`langsmith.api_key_block`); LANGSMITH_ENDPOINT or `langsmith.api_url` say where LangSmith is. No flow
runs and no model is called. See docs/langsmith.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

__all__ = ["add_commands"]


def _connection(config, pipeline: str):
    from promptcycle.errors import ConfigError
    from promptcycle.langsmith.connection import connection
    from promptcycle_tasks.secrets import resolve_langsmith_key

    conn = connection(config, pipeline, resolve_langsmith_key(config, pipeline))
    if conn is None:
        from promptcycle.config import effective_langsmith

        settings = effective_langsmith(config, pipeline)
        raise ConfigError(f"no LangSmith API key: environment variable {settings.api_key_env} is not set",
                          file=str(config.source_path) if config.source_path else None,
                          path="langsmith.api_key_env", found=settings.api_key_env,
                          expected="a set environment variable holding the key (or langsmith.api_key_block)")
    return conn


def cmd_datasets_pull(args: argparse.Namespace) -> int:
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError
    from promptcycle.langsmith.datasets import pull_cases

    config = load_config(args.config)
    pipe = config.pipeline(args.pipeline)
    name = pipe.dataset.langsmith_dataset
    if name is None:
        raise ConfigError(f"the dataset of pipeline {args.pipeline!r} is {pipe.dataset.source!r}, not a LangSmith "
                          "dataset: there is nothing to pull", file=str(config.source_path),
                          path=f"pipelines.{args.pipeline}.dataset.source", found=pipe.dataset.source,
                          expected="'langsmith:DATASET_NAME'")
    conn = _connection(config, args.pipeline)
    cases, path = pull_cases(conn, name, pipe.dataset.mapping, config.source_path.parent)
    spectrums = sorted({c.spectrum for c in cases})
    if args.json:
        print(json.dumps({"success": True, "pipeline": args.pipeline, "dataset": name, "api_url": conn.api_url,
                          "cases": len(cases), "spectrums": spectrums, "local_copy": str(path)}))
    else:
        print(f"langsmith:{name}: pulled {len(cases)} cases ({len(spectrums)} spectrums) from {conn.api_url} "
              f"into {path}; `promptcycle validate --pipeline {args.pipeline}` runs the dataset suite on them")
    return 0


def cmd_datasets_push(args: argparse.Namespace) -> int:
    from promptcycle.catalog import load_config
    from promptcycle.config import effective_langsmith
    from promptcycle.errors import ConfigError
    from promptcycle.evaluation.context import load_pipeline
    from promptcycle.langsmith.datasets import push_cases
    from promptcycle.quality.worker import validate_dataset
    from promptcycle.store.remote import open_store

    config = load_config(args.config)
    pipe = config.pipeline(args.pipeline)
    name = args.dataset or effective_langsmith(config, args.pipeline).dataset_name.replace("{pipeline}",
                                                                                           args.pipeline)
    if name == pipe.dataset.langsmith_dataset:
        raise ConfigError(f"pipeline {args.pipeline!r} reads its cases from the LangSmith dataset {name!r}; pushing "
                          "them back into it would add a second copy of every case: push to another name",
                          file=str(config.source_path), path="langsmith.dataset_name", found=name,
                          expected="a dataset name other than the pipeline's source")
    conn = _connection(config, args.pipeline)  # a missing key fails before the dataset suite runs
    ctx = load_pipeline(args.config, args.pipeline, store=args.store)
    report = validate_dataset(ctx.configured_cases, ctx.splits, spectrums=pipe.dataset.spectrums,
                              min_cases_per_spectrum=pipe.dataset.min_cases_per_spectrum,
                              recorded_splits=open_store(ctx.store_path).get_splits(ctx.dataset_key))
    if not report.success:
        if args.json:
            print(json.dumps({"success": False, "pipeline": args.pipeline, "dataset": name,
                              "dataset_suite": report.to_dict(), "message": "the dataset suite failed: nothing "
                              "was pushed"}, default=str))
        else:
            print(f"the dataset suite failed, nothing was pushed: {report.summary()}")
        return 1
    pushed = push_cases(conn, name, ctx.configured_cases, ctx.splits, pipeline=args.pipeline)
    if args.json:
        print(json.dumps({"success": True, "pipeline": args.pipeline, **pushed.to_dict()}))
    else:
        splits = ", ".join(f"{k} {v}" for k, v in pushed.splits.items())
        print(f"{pushed.summary()} ({splits}) at {conn.api_url}")
    return 0


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("datasets", help="a pipeline's cases to and from LangSmith",
                              description="Pull a `langsmith:` dataset source into its local copy, or push a "
                              "pipeline's cases (with their splits) to LangSmith. See docs/langsmith.md.")
    sub = p.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    pull = sub.add_parser("pull", help="refresh the local copy of the pipeline's `langsmith:` dataset")
    common(pull)
    pull.add_argument("--pipeline", required=True, help="pipeline name")
    pull.set_defaults(func=cmd_datasets_pull)
    push = sub.add_parser("push", help="publish the pipeline's cases and splits as a LangSmith dataset")
    common(push)
    push.add_argument("--pipeline", required=True, help="pipeline name")
    push.add_argument("--dataset", default=None, help="LangSmith dataset name (default: langsmith.dataset_name, "
                      "promptcycle-{pipeline})")
    push.set_defaults(func=cmd_datasets_push)
