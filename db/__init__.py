"""nmgen.db: the SQLite tuning database (sqlite-utils). Stores plain values; knows nothing of CUDA."""
from .store import (APPLICATION_ID, SCHEMA_VERSION, STATUSES, DatabaseError, MissingDatabase, RecordError, TuningDB,
                    check_creatable, default_path, parse_records, record_problems)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "STATUSES", "DatabaseError", "MissingDatabase", "RecordError",
           "TuningDB", "check_creatable", "default_path", "parse_records", "record_problems"]
