"""``CMSClient``'s operator actions on stored events: ``retry`` and ``purge``.

What ``cms-outbox retry`` and ``purge`` do, apart from the SDK's calls and the client's
lifecycle: a mixin, so that they stay methods of the one public client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

from .results import EventState

if TYPE_CHECKING:
    from .scheduling import FlushScheduler
    from .store import Store

__all__ = ["Upkeep"]


class Upkeep:
    """``retry`` and ``purge`` for ``CMSClient``: each checks the client is open first."""

    # What the actions use of the client they are mixed into.
    store: Store
    _scheduler: FlushScheduler | None

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

        def _now(self) -> float: ...

    def retry(
        self, event_ids: Sequence[str] = (), *, dead: bool = False, blocked: bool = False
    ) -> int:
        """Make dead or blocked events pending and due now; their attempt history is kept.

        Retrying a dead deferred setup also releases its customer's blocked follow-ups. Like
        a purge, it acknowledges what is dead or blocked: `health` flags only what follows.

        :param event_ids: these events (those that are dead or blocked).
        :param dead: every dead event.
        :param blocked: every blocked event.
        :returns: how many events became pending.
        :raises StorageError: the database failed.
        """
        self._check_open()
        states = [EventState.DEAD] * dead + [EventState.BLOCKED] * blocked
        count = self.store.retry(list(event_ids), states=states, now=self._now())
        if count and self._scheduler is not None:
            self._scheduler.wake()
        return count

    def purge(
        self,
        *,
        delivered_older_than: float | None = None,
        dead_older_than: float | None = None,
        dry_run: bool = False,
        each: Callable[[str], object] | None = None,
    ) -> int:
        """Delete delivered and dead events (with their attempts) older than the given ages.

        Memory stays flat however many events go: they are deleted in batches. Unless a
        dry run, it acknowledges what is dead or blocked (see `health`).

        :param delivered_older_than: seconds since delivery; None keeps every delivered event.
        :param dead_older_than: seconds since the last attempt; None keeps every dead event.
        :param dry_run: delete nothing, only report.
        :param each: called with the ``event_id`` of every event deleted (or, with
            ``dry_run``, that would be), batch by batch as each one commits.
        :returns: how many events were deleted (or would be).
        :raises StorageError: the database failed.
        """
        self._check_open()
        now = self._now()
        count = 0
        for batch in self.store.purge(
            delivered_before=None if delivered_older_than is None else now - delivered_older_than,
            dead_before=None if dead_older_than is None else now - dead_older_than,
            dry_run=dry_run,
        ):
            count += len(batch)
            if each is not None:
                for event_id in batch:
                    each(event_id)
        return count
