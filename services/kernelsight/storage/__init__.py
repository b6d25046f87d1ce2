"""Storage engines behind `--db`: a SQLite file (db.py) or PostgreSQL (postgres.py, imported
only for a ``postgresql+psycopg://`` URL), and the in-place SQLite upgrades (upgrade.py)."""

from kernelsight.config import db_label, is_db_url, is_postgres

__all__ = ["db_label", "is_db_url", "is_postgres"]
