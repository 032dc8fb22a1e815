"""Read the dbt split tables and export a validated snapshot of them for model training.

The snapshot is what every model trains and evaluates on: parquet files per split plus a manifest
with row counts and a content hash, so a model run can record exactly which data it came from.
Files are written to a temporary folder and swapped in with one rename, so a crash never leaves a
half-written snapshot.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml.data.warehouse import LOCK_WAIT_SECONDS, connect
from ml.io import atomic_folder

SPLITS = ("train", "validation", "test")
SPLITS_TABLE = "main.mona_splits"
LABELED_TABLE = "main.int_mona__labeled"


@dataclass(frozen=True)
class SplitSnapshot:
    folder: Path
    rows: dict[str, int]
    met_share: dict[str, float]
    content_hash: str  # sha256 over (condition_id, split, label), sorted: same data -> same hash

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def load_split_tables(warehouse: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mona_splits, int_mona__labeled) as DataFrames, read without taking the write lock."""
    con = connect(warehouse, read_only=True, wait_seconds=LOCK_WAIT_SECONDS)
    try:
        splits = con.execute(f"select * from {SPLITS_TABLE}").df()
        labeled = con.execute(f"select condition_id, label, label_reason from {LABELED_TABLE}").df()
    finally:
        con.close()
    return splits, labeled


def split_content_hash(splits: pd.DataFrame) -> str:
    key = splits[["condition_id", "split", "label"]].sort_values("condition_id").astype(str)
    digest = hashlib.sha256()
    digest.update("\n".join(key.agg("|".join, axis=1)).encode("utf-8"))
    return digest.hexdigest()


def export_splits(splits: pd.DataFrame, folder: Path) -> SplitSnapshot:
    """Write one parquet per split and a manifest, swapped in whole: readers never see a mix of two."""
    parts = {split: splits[splits["split"] == split].sort_values("condition_id").reset_index(drop=True)
             for split in SPLITS}
    rows = {split: int(len(part)) for split, part in parts.items()}
    met_share = {split: round(float(part["is_met"].mean()), 4) if len(part) else float("nan")
                 for split, part in parts.items()}
    snapshot = SplitSnapshot(folder=Path(folder), rows=rows, met_share=met_share,
                             content_hash=split_content_hash(splits))

    def write(staging: Path) -> None:
        for split, part in parts.items():
            part.to_parquet(staging / f"{split}.parquet", index=False)
        (staging / "manifest.json").write_text(json.dumps(
            {"rows": rows, "met_share": met_share, "content_hash": snapshot.content_hash}, indent=2),
            encoding="utf-8")

    atomic_folder(snapshot.folder, write)
    return snapshot


def read_split(folder: Path, split: str) -> pd.DataFrame:
    path = Path(folder) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"split snapshot {path} does not exist; materialize validated_splits first")
    return pd.read_parquet(path)
