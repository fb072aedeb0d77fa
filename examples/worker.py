"""A worker that only enqueues; one ``cms-outbox run`` daemon delivers for every worker.

It reads orders as JSON objects on stdin (one per line, or spread over several lines:
a stream of objects, as ``jq`` prints them) and tracks each as a sale. With
``flush="off"`` it sends nothing and needs no token: ``track_sale`` returns once the
event is stored, and the daemon delivers it (and keeps retrying through outages). An
order that misses a field or is refused (``ValidationError``) is reported on one line and
skipped. Input that is not valid JSON ends the reading there, with one line and exit code
1: the orders before it stay stored, the rest is not read.

Run it beside the daemon (the token only in the daemon's environment)::

    cms-outbox sandbox --port 8765 --token dev-token
    CMS_BEARER_TOKEN=dev-token CMS_HOST=http://127.0.0.1:8765 \
        cms-outbox run --database-url sqlite:///app.db
    echo '{"customer_id": "user_42", "click_id": "clk_1", "invoice_id": "inv_1",
           "amount": 4999, "currency": "USD"}' \
        | CMS_OUTBOX_URL=sqlite:///app.db python examples/worker.py

A Celery worker is the same: create the client once per worker process (e.g. at
module level of the tasks module, or in a ``worker_process_init`` handler) with
``flush="off"``, and call ``track_sale`` in the task.

Environment: ``CMS_OUTBOX_URL`` (the daemon's ``--database-url``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from cms_outbox import CMSClient, ValidationError

# Warnings and errors of every library (no INFO chatter, e.g. from the schema check);
# this script's own lines at INFO.
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
logger = logging.getLogger("worker")
logger.setLevel(logging.INFO)

FIELDS = ("customer_id", "invoice_id", "amount", "currency")


def orders(text: str) -> Iterator[tuple[int, Any]]:
    """Each JSON value in ``text`` with its line number; one ``ValueError`` ends the stream."""
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {exc.lineno}: not valid JSON ({exc.msg})") from None
        yield line, value


def main() -> int:
    stored = rejected = 0
    code = 0
    with CMSClient(flush="off") as cms:
        try:
            for line, order in orders(sys.stdin.read()):
                if track(cms, line, order):
                    stored += 1
                else:
                    rejected += 1
        except ValueError as exc:  # the rest of the input cannot be read
            logger.error("stopped reading: %s", exc)
            code = 1
    logger.info("sales stored for delivery: %d, orders rejected: %d", stored, rejected)
    return code


def track(cms: CMSClient, line: int, order: Any) -> bool:
    """Store one order as a sale; False (and a warning) for an order that is not one."""
    missing = [name for name in FIELDS if not isinstance(order, dict) or name not in order]
    if missing:
        logger.warning("order on line %d rejected: missing %s", line, ", ".join(missing))
        return False
    try:
        cms.track_sale(
            event_name="purchase",
            customer_external_id=order["customer_id"],
            click_id=order.get("click_id"),
            invoice_id=order["invoice_id"],
            amount=order["amount"],
            currency=order["currency"],
        )
    except ValidationError as exc:  # bad input: nothing was written
        logger.warning("order %s rejected: %s", order["invoice_id"], exc)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
