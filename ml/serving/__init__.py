"""The registered models as MLflow Models (pyfunc): `models.py` defines what they do when loaded,
`publish.py` logs and registers them, `reward_entry.py` / `policy_entry.py` are the models-from-code
files MLflow runs to build them at load time."""
