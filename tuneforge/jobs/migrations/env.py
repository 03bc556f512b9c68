"""Alembic environment: migrations run on the connection `tuneforge.jobs.db.migrate` passes."""

from alembic import context

from tuneforge.jobs.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE via copy on SQLite
)
with context.begin_transaction():
    context.run_migrations()
