"""Where a profile's files live: one data home holding landing, quarantine, warehouse and exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
PAPER_SAMPLE_CSV = Path(__file__).resolve().parent / "data" / "samples" / "mona_table2_sample.csv"


def default_home(profile: str) -> Path:
    return REPO_ROOT / ".rlxf" / profile


def _entry(name: str, doc: str) -> property:
    """A path inside the data home, documented where it is declared."""
    return property(lambda home: home.root / name, doc=doc)


@dataclass(frozen=True)
class DataHome:
    root: Path

    landing = _entry("landing", "MONA exports (.xlsx/.csv) waiting to be ingested; the sensor watches this folder.")
    quarantine = _entry("quarantine", "Files that could not be ingested, each next to a `<name>.reason.txt`.")
    warehouse = _entry("warehouse.duckdb", "The DuckDB warehouse: raw tables and the dbt models.")
    exports = _entry("exports", "Validated split snapshots (parquet) that model training reads.")
    truth = _entry("truth", "Synthetic generator sidecars: true P(MET) per condition, never part of an export.")
    models = _entry("models", "Local model folders: training outputs and the converted base policy.")
    reports = _entry("reports", "The evaluation report and its plots.")
    profile_file = _entry("profile.toml", "The profile's overrides (TOML, `ml.config.load_profile`), applied "
                                          "when it exists.")

    def ensure(self) -> DataHome:
        for folder in (self.root, self.landing, self.quarantine, self.exports, self.truth, self.models,
                       self.reports):
            folder.mkdir(parents=True, exist_ok=True)
        return self
