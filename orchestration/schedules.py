"""Periodic retraining, off until a person turns it on in the Dagster UI."""

import os

import dagster as dg

from orchestration.jobs import retraining_job

# Weekly by default (Mondays 03:00); RLXF_RETRAIN_CRON changes it.
RETRAIN_CRON = os.environ.get("RLXF_RETRAIN_CRON", "0 3 * * 1")

weekly_retraining_schedule = dg.ScheduleDefinition(
    name="periodic_retraining",
    job=retraining_job,
    cron_schedule=RETRAIN_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrains on a cron even when no new file arrived (e.g. after a label-map change).",
)
