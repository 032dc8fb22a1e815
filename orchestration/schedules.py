"""Periodic retraining, off until a person turns it on in the Dagster UI."""

import dagster as dg

from orchestration.jobs import retraining_job

# Weekly by default (Mondays 03:00); RLXF_RETRAIN_CRON changes it.
RETRAIN_CRON = dg.EnvVar("RLXF_RETRAIN_CRON").get_value("0 3 * * 1")

weekly_retraining_schedule = dg.ScheduleDefinition(
    name="periodic_retraining",
    job=retraining_job,
    cron_schedule=RETRAIN_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrains on a cron even when no new file arrived (e.g. after a label-map change).",
)
