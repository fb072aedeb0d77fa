"""PostgreSQL LISTEN/NOTIFY: wake an idle flusher the moment any process commits an event.

Polling stays the fallback: while the listening connection is down, the periodic
pass still finds every row.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from sqlalchemy import Engine

from .driver_errors import describe
from .schema import NOTIFY_CHANNEL

__all__ = ["Listen", "listener"]

logger = logging.getLogger(__name__)
Listen = Callable[[Callable[[], None], threading.Event], None]
MAX_RECONNECT_DELAY = 30.0
# An idle LISTEN connection is what NAT gateways and cloud load balancers drop silently
# after a few minutes, while the OS starts keepalive probes only after two hours: the
# daemon would wait on a dead connection forever. Probing after 30 s of silence keeps
# the path open and notices a dead peer within about a minute (libpq options; the
# URL's own settings win).
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
              "keepalives_count": "3"}  # fmt: skip


def listener(engine: Engine) -> Listen | None:
    """A blocking ``listen(wake, stop)`` for a PostgreSQL outbox, or None for other backends."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None
    url = engine.url.set(drivername="postgresql")
    conninfo = url.set(query={**KEEPALIVES, **url.query}).render_as_string(hide_password=False)

    def listen(wake: Callable[[], None], stop: threading.Event) -> None:
        import psycopg

        delay, lost = 1.0, False
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if lost:
                        logger.warning("LISTEN connection to PostgreSQL restored")
                        lost = False
                    delay = 1.0
                    wake()  # whatever was committed while we were not listening
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            wake()
            except psycopg.Error as exc:
                if stop.is_set():
                    return  # closed while the connection went away: nothing to report
                if not lost:
                    logger.warning(
                        "LISTEN connection to PostgreSQL lost (%s); polling until it is back",
                        describe(exc),
                    )
                    lost = True
                stop.wait(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    return listen
