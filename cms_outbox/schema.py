"""The outbox tables: the one description the store queries against.

Alembic revisions in ``migrations/`` create them; a test checks the two agree.
Times are epoch seconds (double precision) so that every backend compares them
the same way and the hot path formats nothing.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

__all__ = [
    "HAS_INVOICE",
    "NOTIFY_CHANNEL",
    "attempts",
    "control",
    "events",
    "flushers",
    "metadata",
]

metadata = MetaData()

# PostgreSQL: every enqueue notifies this channel in its transaction; idle flushers LISTEN.
NOTIFY_CHANNEL = "cms_outbox_events"

# The rows the invoice id's unique index covers: sales (leads have none).
HAS_INVOICE = text("invoice_id IS NOT NULL")

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
SequenceId = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "cms_outbox_events",
    metadata,
    Column("id", SequenceId, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("customer_external_id", String(255), nullable=False),
    Column("click_id", String(255)),
    Column("mode", String(16)),
    Column("invoice_id", String(255)),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Double, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", Double),
    Column("created_at", Double, nullable=False),
    Column("last_attempt_at", Double),
    Column("delivered_at", Double),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("last_response", Text),
    UniqueConstraint("event_id", name="uq_cms_outbox_events_event_id"),
    # A sale's natural key: the index, not a lookup that can race, turns a repeat into a
    # no-op. Partial: leads have no invoice id, and an enqueue should not pay for one.
    # Revision 0003 makes it partial on PostgreSQL too; ``postgresql_where`` is left out
    # here because naming it imports the PostgreSQL dialect (a start on SQLite would pay
    # for it), and no query reads it.
    Index(
        "uq_cms_outbox_events_invoice_id",
        "invoice_id",
        unique=True,
        sqlite_where=HAS_INVOICE,
    ),  # fmt: skip
    # The lease scan walks one state in enqueue order.
    Index("ix_cms_outbox_events_state_id", "state", "id"),
    # FIFO: "an earlier row of this customer still unfinished" is a seek per state, however
    # much delivered history the customer has.
    Index("ix_cms_outbox_events_customer_state_id", "customer_external_id", "state", "id"),
    # A follow-up's governing setup (the customer's latest deferred setup before it) is one
    # backward seek, however many dead setups are kept.
    Index("ix_cms_outbox_events_customer_mode_id", "customer_external_id", "mode", "id"),
    # The dashboard's enqueues per minute and time-range filter read only the span asked for.
    Index("ix_cms_outbox_events_created_at", "created_at"),
)

attempts = Table(
    "cms_outbox_attempts",
    metadata,
    Column("id", SequenceId, primary_key=True, autoincrement=True),
    Column("event_seq", BigInteger, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("duration", Double, nullable=False),
    Column("status_code", Integer),
    Column("outcome", String(16), nullable=False),
    Column("error", Text),
    Column("response", Text),
    Index("ix_cms_outbox_attempts_event_seq", "event_seq"),
    # The dashboard's outcomes per minute: read from the index alone, only the span charted.
    Index("ix_cms_outbox_attempts_started_at", "started_at", "outcome"),
)

# One row per outbox: the shared pacing budget (``pacing.Budget``) and the pauses every
# flusher must see.
control = Table(
    "cms_outbox_control",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("tokens", Double, nullable=False),
    Column("tokens_at", Double, nullable=False),
    Column("outage_since", Double),
    Column("auth_paused_since", Double),
    Column("pause_error", Text),
    Column("quota_requests", Double, nullable=False, server_default=text("60")),
    Column("quota_window", Double, nullable=False, server_default=text("60")),
    Column("limit_source", String(16), nullable=False, server_default=text("'assumed'")),
    Column("remaining", Integer),
    Column("reset_at", Double, nullable=False, server_default=text("0")),
    Column("paused_until", Double, nullable=False, server_default=text("0")),
    Column("counted_since", Double, nullable=False, server_default=text("0")),
    Column("counted", Integer, nullable=False, server_default=text("0")),
    Column("changed_at", Double, nullable=False, server_default=text("0")),
    Column("probed_from", Double, nullable=False, server_default=text("0")),
    Column("ceiling", Double, nullable=False, server_default=text("0")),
    # The last operator retry or purge: health calls what went dead after it new.
    Column("acknowledged_at", Double),
)

# One row per running flusher (an in-process client's or a daemon's): who it is and when it
# last beat. ``status`` and ``health`` tell a live outbox from one nobody delivers.
flushers = Table(
    "cms_outbox_flushers",
    metadata,
    Column("owner", String(64), primary_key=True),  # the flusher's lease owner token
    Column("kind", String(16), nullable=False),  # "client" or "daemon"
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(32), nullable=False),
    Column("started_at", Double, nullable=False),
    Column("beat_at", Double, nullable=False),
)
