"""nmgen.db: the SQLite tuning database (sqlite-utils). Stores plain values; knows nothing of CUDA."""
from .store import SCHEMA_VERSION, STATUSES, TuningDB, default_path

__all__ = ["SCHEMA_VERSION", "STATUSES", "TuningDB", "default_path"]
