"""A worker that only enqueues; one ``cms-outbox run`` daemon delivers for every worker.

It reads orders as JSON lines on stdin and tracks each as a sale. With
``flush="off"`` it sends nothing and needs no token: ``track_sale`` returns once the
event is stored, and the daemon delivers it (and keeps retrying through outages).

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

from cms_outbox import CMSClient, ValidationError

logger = logging.getLogger("worker")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    stored = rejected = 0
    with CMSClient(flush="off") as cms:
        for line in sys.stdin:
            if not line.strip():
                continue
            order = json.loads(line)
            try:
                cms.track_sale(
                    event_name="purchase",
                    customer_external_id=order["customer_id"],
                    click_id=order.get("click_id"),
                    invoice_id=order["invoice_id"],
                    amount=order["amount"],
                    currency=order["currency"],
                )
                stored += 1
            except ValidationError as exc:  # bad input: nothing was written
                logger.warning("order %s rejected: %s", order.get("invoice_id"), exc)
                rejected += 1
    logger.info("stored %d sales for delivery, rejected %d", stored, rejected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
