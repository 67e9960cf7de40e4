"""The outbox table: its columns, indexes and what "pending" means (SQLAlchemy Core)."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["DEFAULT_TABLE", "outbox_table", "pending_rows"]

DEFAULT_TABLE = "eventbus_outbox"  #: the outbox table's name unless ``table_name`` is given


def outbox_table(
    metadata: sa.MetaData, name: str = DEFAULT_TABLE, *, schema: str | None = None
) -> sa.Table:
    """The outbox table, in ``metadata`` (for a migration tool such as Alembic)."""
    table = sa.Table(
        name,
        metadata,
        # SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid).
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("aggregate_type", sa.String(255)),
        sa.Column("aggregate_id", sa.String(255)),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("failed_at", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer(), nullable=False, default=0, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.UniqueConstraint("event_id", name=f"{name}_event_id_key"),
        schema=schema,
    )
    pending = sa.text("published_at IS NULL AND failed_at IS NULL")
    sa.Index(f"{name}_pending_idx", table.c.id, postgresql_where=pending, sqlite_where=pending)
    return table


def pending_rows(table: sa.Table) -> sa.ColumnElement[bool]:
    """The pending rows: neither published nor failed."""
    return sa.and_(table.c.published_at.is_(None), table.c.failed_at.is_(None))
