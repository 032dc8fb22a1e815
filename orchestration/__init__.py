"""Dagster definitions for RLXF on MONA: thin assets over the `ml` library."""
