"""SQLAlchemy async adapter: schema, migrations and repositories for SQLite and PostgreSQL."""
