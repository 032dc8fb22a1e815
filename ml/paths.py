"""Where a profile's files live: one data home holding landing, quarantine, warehouse and exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
PAPER_SAMPLE_CSV = Path(__file__).resolve().parent / "data" / "samples" / "mona_table2_sample.csv"


def default_home(profile: str) -> Path:
    return REPO_ROOT / ".rlxf" / profile


@dataclass(frozen=True)
class DataHome:
    root: Path

    @property
    def landing(self) -> Path:
        """MONA exports (.xlsx/.csv) waiting to be ingested; the sensor watches this folder."""
        return self.root / "landing"

    @property
    def quarantine(self) -> Path:
        """Files that could not be ingested, each next to a `<name>.reason.txt`."""
        return self.root / "quarantine"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def exports(self) -> Path:
        """Validated split snapshots (parquet) that model training reads."""
        return self.root / "exports"

    @property
    def truth(self) -> Path:
        """Synthetic generator sidecars: true P(MET) per condition, never part of an export."""
        return self.root / "truth"

    @property
    def models(self) -> Path:
        """Local model folders: training outputs and the converted base policy."""
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def profile_file(self) -> Path:
        """The profile's overrides (TOML, `ml.config.load_profile`), applied when it exists."""
        return self.root / "profile.toml"

    def ensure(self) -> DataHome:
        for folder in (self.root, self.landing, self.quarantine, self.exports, self.truth, self.models,
                       self.reports):
            folder.mkdir(parents=True, exist_ok=True)
        return self
