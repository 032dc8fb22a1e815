"""Fill an empty landing folder with the embedded default data: synthetic MONA plus the paper's rows.

Runs once per data home (a marker file remembers it), so a user who empties the landing folder or
drops in real exports never gets synthetic data mixed in behind their back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ml.config import DataSettings
from ml.data.synthetic import write_synthetic_export
from ml.paths import PAPER_SAMPLE_CSV, DataHome

SEEDED_MARKER = ".landing_seeded"


def seed_landing(home: DataHome, settings: DataSettings) -> list[Path]:
    """Write the profile's default exports into the landing folder on first run; returns new files."""
    home.ensure()
    marker = home.root / SEEDED_MARKER
    if marker.exists() or settings.synthetic_rows <= 0 and not settings.include_paper_sample:
        return []
    written: list[Path] = []
    if settings.synthetic_rows > 0:
        export, _truth = write_synthetic_export(home.landing, home.truth, settings.synthetic_rows,
                                                seed=settings.seed, fmt=settings.synthetic_format)
        written.append(export)
    if settings.include_paper_sample:
        target = home.landing / PAPER_SAMPLE_CSV.name
        shutil.copyfile(PAPER_SAMPLE_CSV, target)
        written.append(target)
    marker.write_text("\n".join(path.name for path in written) + "\n", encoding="utf-8")
    return written
