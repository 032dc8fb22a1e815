"""Fill an empty landing folder with the embedded default data: synthetic MONA plus the paper's rows.

Only into an empty landing folder, and once per data home (a marker file remembers the decision): a
user who drops in real exports, or later empties the landing folder, never gets synthetic data mixed in
behind their back. The `paper` profile seeds nothing.
"""

from __future__ import annotations

from pathlib import Path

from ml.config import DataSettings
from ml.data.ingest import landing_files
from ml.data.synthetic import write_synthetic_export
from ml.io import atomic_copy
from ml.paths import PAPER_SAMPLE_CSV, DataHome

SEEDED_MARKER = ".landing_seeded"


def seed_landing(home: DataHome, settings: DataSettings) -> list[Path]:
    """Write the profile's default exports into an empty landing folder on first run; returns new files."""
    home.ensure()
    marker = home.root / SEEDED_MARKER
    if marker.exists() or settings.synthetic_rows <= 0 and not settings.include_paper_sample:
        return []
    if landing_files(home.landing):
        # The user's own exports: never mixed with synthetic data, now or after the folder is emptied.
        marker.write_text("(not seeded: the landing folder held exports)\n", encoding="utf-8")
        return []
    written: list[Path] = []
    if settings.synthetic_rows > 0:
        export, _truth = write_synthetic_export(home.landing, home.truth, settings.synthetic_rows,
                                                seed=settings.seed, fmt=settings.synthetic_format)
        written.append(export)
    if settings.include_paper_sample:
        target = home.landing / PAPER_SAMPLE_CSV.name
        atomic_copy(PAPER_SAMPLE_CSV, target)  # hidden until complete: the sensor skips .partial names
        written.append(target)
    marker.write_text("\n".join(path.name for path in written) + "\n", encoding="utf-8")
    return written
