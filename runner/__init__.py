"""migration-runner: applies NNN_description.sql migrations to PostgreSQL, exactly once."""

__version__ = "0.2.0"
