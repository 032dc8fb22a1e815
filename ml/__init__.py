"""RLXF on MONA: plain-Python library (no Dagster imports).

`ml.data` reads and generates MONA exports and loads them into DuckDB, `ml.config` holds the
per-profile sizes and model choices; orchestration/ wraps these functions as Dagster assets.
"""
