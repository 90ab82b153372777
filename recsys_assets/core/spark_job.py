"""Entry point of the Spark stages (recsys_assets/core/spark_stages.py) when they run outside the Dagster process:
spark-submit on a host or a Dataproc PySpark job. It runs the same stage functions as the in-process path and reports
back through Dagster Pipes (logs, and the stats as a custom message); the stats are also in the version dir's
stats.json.

    python -m recsys_assets.core.spark_job --stage filtered_events --data-root gs://b/p --day 2024-03-01 \
        --version 20240302T... [--params-json '{"datagen_spec": {...}}'] [--pipes-transport gcs]

Pipes bootstrap parameters arrive as environment variables (subprocess) or as `--dagster-pipes-*` command-line
arguments (Dataproc); both are handled. Without any (a manual run) it still runs and prints the stats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from recsys_assets.core.spark_stages import SPARK_STAGES, job_name, run_stage
from resources.spark import JOB_SPARK_CONF
from resources.store import DatasetStore


def _pipes(transport: str):
    from dagster_pipes import (
        DAGSTER_PIPES_CONTEXT_ENV_VAR,
        PipesCliArgsParamsLoader,
        PipesEnvVarParamsLoader,
        open_dagster_pipes,
    )

    cli = any(a.startswith("--dagster-pipes-") for a in sys.argv)
    if not cli and DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ:
        return contextlib.nullcontext(None)
    kwargs = {"params_loader": PipesCliArgsParamsLoader() if cli else PipesEnvVarParamsLoader()}
    if transport == "gcs":
        from dagster_pipes import PipesGCSContextLoader, PipesGCSMessageWriter
        from google.cloud import storage

        client = storage.Client()
        kwargs |= {
            "context_loader": PipesGCSContextLoader(client=client),
            "message_writer": PipesGCSMessageWriter(client=client),
        }
    return open_dagster_pipes(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run one Spark stage for one day")
    p.add_argument("--stage", required=True, choices=sorted(SPARK_STAGES))
    p.add_argument("--data-root", required=True)
    p.add_argument("--day", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--params-json", default="{}")
    p.add_argument("--pipes-transport", default="default", choices=["default", "gcs"])
    return p


def main(argv: list[str] | None = None) -> dict:
    args, _unknown = build_parser().parse_known_args(argv)  # --dagster-pipes-* arguments are read by the Pipes loader

    from pyspark.sql import SparkSession

    # The master comes from spark-submit / Dataproc (or SPARK_MASTER for a plain `python -m` run).
    builder = SparkSession.builder.appName(f"recsys-{args.stage}-{args.day}")
    for k, v in JOB_SPARK_CONF.items():
        builder = builder.config(k, v)
    if os.environ.get("SPARK_MASTER"):
        builder = builder.master(os.environ["SPARK_MASTER"])
    session = builder.getOrCreate()

    with _pipes(args.pipes_transport) as pipes:
        if pipes is not None:
            pipes.log.info(f"{args.stage} {args.day} on {session.sparkContext.master} -> version {args.version}")
        stats = run_stage(
            session, args.stage, DatasetStore(args.data_root), args.day, args.version, json.loads(args.params_json)
        )
        if pipes is not None:
            pipes.report_custom_message(
                {"job": job_name(args.stage, args.day), "version": args.version, "stats": stats}
            )
        else:
            print(json.dumps(stats, default=str))
    return stats


if __name__ == "__main__":
    main()
