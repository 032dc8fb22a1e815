"""Synthetic seeding: only into an empty landing folder, and by default only in the profile's own home."""

import shutil

from ml.config import get_profile
from ml.data.landing import seed_landing
from ml.paths import DataHome, default_home
from orchestration.resources import RlxfSettings


def test_seeds_an_empty_landing_folder_once(tmp_path):
    home = DataHome(tmp_path)
    written = seed_landing(home, get_profile("smoke").data)
    assert sorted(p.name for p in written) == ["MONA_StructuralConditions_synthetic_7.csv", "mona_table2_sample.csv"]
    for path in written:
        path.unlink()
    assert seed_landing(home, get_profile("smoke").data) == []  # once per data home
    assert list(home.landing.iterdir()) == []


def test_never_mixes_synthetic_data_with_the_users_exports(tmp_path, paper_sample_csv):
    # Regression: smoke/demo seeded synthetic data into a landing folder that already held exports.
    home = DataHome(tmp_path).ensure()
    shutil.copy(paper_sample_csv, home.landing / "my_export.csv")
    assert seed_landing(home, get_profile("demo").data) == []
    assert [p.name for p in home.landing.iterdir()] == ["my_export.csv"]
    (home.landing / "my_export.csv").unlink()  # emptied later: still no synthetic data
    assert seed_landing(home, get_profile("demo").data) == []


def test_paper_profile_seeds_nothing(tmp_path):
    assert seed_landing(DataHome(tmp_path), get_profile("paper").data) == []


def test_synthetic_data_only_in_the_profiles_default_home_unless_asked(tmp_path):
    # Regression: a mistyped RLXF_HOME silently trained on synthetic data.
    assert RlxfSettings(profile="demo").seeds_synthetic_data()
    assert RlxfSettings(profile="demo", home=str(default_home("demo"))).seeds_synthetic_data()
    assert not RlxfSettings(profile="demo", home=str(tmp_path / "my_data")).seeds_synthetic_data()
    assert RlxfSettings(profile="demo", home=str(tmp_path), seed_synthetic=True).seeds_synthetic_data()
