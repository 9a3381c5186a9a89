"""Many jobs, one machine or many: a job store (``store``), an engine on Dask (``engine``, ``worker``), JSON Lines
manifests (``manifest``) and the ``nst batch`` driver (``batch``). Needs the ``jobs`` extra (dask[distributed],
SQLAlchemy 2, psycopg 3 for PostgreSQL)."""
