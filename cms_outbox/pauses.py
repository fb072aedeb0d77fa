"""Delivery pauses: one flusher's circuit breaker, published for ``status``, told in the log.

Every change of the breaker gets one line an operator can follow, with its numbers: an
outage starts (WARNING, when the next probe goes), a probe fails (INFO, how long so far,
the next probe), it ends (INFO, how long, how many probes); the service refuses the
token (ERROR: the token is read when the process starts, so a new one takes a restart)
and accepts it again (INFO). A pause that an earlier flusher published and this one's
first answer ends is told too. A pause that starts while the client shuts down is told
only by its closing line (``because``), which says what it leaves undelivered and why.
"""

from __future__ import annotations

import logging
import random
import re

from .formatting import format_age, isoformat
from .policy import Breaker
from .store import Store

__all__ = ["Pauses"]

logger = logging.getLogger(__name__)

# A token is a setting, read once when the process starts.
RESTART = "a new token is not picked up while running: restart with a valid CMS_BEARER_TOKEN"
_TYPE_PREFIX = re.compile(r"^[A-Za-z]+: ")  # the exception's name before a transport error


class Pauses:
    """The breaker of one flusher and the pause it publishes in the control row."""

    def __init__(self, store: Store, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.breaker = Breaker()
        self._probes = 0  # failed probes of the pause in progress
        self._published_checked = False  # a pause an earlier flusher published ends with us
        # Shutting down (exit, close()): the closing line tells a pause that starts now.
        self.quiet = False

    def after_fork(self) -> None:
        self._published_checked = False
        self.quiet = False

    def failed(self, reason: str, now: float, error: str | None) -> None:
        """No answer (``"outage"``) or a refused token (``"auth"``): open the circuit."""
        breaker = self.breaker
        failures = breaker.failures
        started = breaker.trip(reason, now, self.rng, error)
        next_probe = format_age(max(0.0, breaker.retry_at - now))
        if started:
            self._probes = 0
            if self.quiet:
                logger.debug("delivery paused while closing (%s): %s", reason, error)
            elif reason == "auth":
                logger.error(
                    "delivery paused: the CMS service rejected the token (%s); every event "
                    "stays pending; %s; next probe in %s",
                    error, RESTART, next_probe,
                )  # fmt: skip
            else:
                logger.warning(
                    "outage started: CMS service unreachable (%s); delivery paused, next "
                    "probe in %s",
                    error, next_probe,
                )  # fmt: skip
            self._publish()
        elif breaker.failures > failures:  # a probe failed: reopened for longer
            self._probes += 1
            lasted = format_age(now - (breaker.since or now))
            if reason == "auth":
                logger.info(
                    "token still rejected after %s (%s); next probe in %s", lasted, error,
                    next_probe,
                )  # fmt: skip
            else:
                logger.info(
                    "outage continues after %s: probe failed (%s); next probe in %s",
                    lasted, error, next_probe,
                )  # fmt: skip

    def because(self) -> str | None:
        """Why delivery is paused, in plain words for the closing line; None if it is not."""
        breaker = self.breaker
        if breaker.paused == "auth":
            return f"the CMS service rejected the token ({breaker.error})"
        if breaker.paused == "outage":
            # "ConnectionError: connection refused (...)" -> "connection refused (...)"
            error = _TYPE_PREFIX.sub("", breaker.error or "") or "no answer"
            return f"the CMS service is unreachable, {error}"
        return None

    def answered(self, now: float) -> None:
        """The service answered: close the circuit, ending a pause if one is in effect."""
        if not self._published_checked:
            self._published_checked = True
            if not self.breaker.paused:
                self._end_published()
        breaker = self.breaker
        if breaker.reason is None:
            return
        lasted = format_age(now - (breaker.since or now))
        ended = breaker.close()
        if ended == "auth":
            logger.info("delivery resumed after %s: the CMS service accepts the token", lasted)
        elif ended == "outage":
            logger.info(
                "outage ended after %s (%d failed probes): CMS service reachable, delivering",
                lasted, self._probes,
            )  # fmt: skip
        if ended:
            self._publish()

    def _end_published(self) -> None:
        row = self.store.control_row()
        for reason, column in (("auth", "auth_paused_since"), ("outage", "outage_since")):
            since = row.get(column)
            if since is not None:
                what = "the token is accepted" if reason == "auth" else "the service answers"
                logger.info(
                    "delivery resumed: the %s pause published since %s (%s) is over, %s",
                    reason, isoformat(float(since)), row.get("pause_error"), what,
                )  # fmt: skip
                self._publish()
                return

    def _publish(self) -> None:
        breaker = self.breaker
        self.store.set_pause(
            outage_since=breaker.since if breaker.reason == "outage" else None,
            auth_paused_since=breaker.since if breaker.reason == "auth" else None,
            error=breaker.error,
        )
