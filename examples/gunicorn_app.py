"""gunicorn: several worker processes, each delivering with its own background flusher.

The client is created at import. Without ``--preload`` every worker imports this
module and creates its own; with ``--preload`` the master creates it once before it
forks, and each worker's copy starts a fresh flusher after the fork (the library
registers an ``os.register_at_fork`` hook: there is nothing to add to the app).
The flushers share the outbox, its leases and its rate limit: each event is sent once.

Run it against the local sandbox::

    cms-outbox sandbox --port 8765 --token dev-token
    CMS_BEARER_TOKEN=dev-token CMS_HOST=http://127.0.0.1:8765 CMS_OUTBOX_URL=sqlite:///$PWD/app.db \
        gunicorn -c examples/gunicorn.conf.py --chdir examples gunicorn_app:app [--preload]
    curl -X POST 'localhost:8000/signup/user_42?click_id=clk_1'

Environment: ``CMS_BEARER_TOKEN``, ``CMS_HOST``, ``CMS_OUTBOX_URL`` and
``CMS_RATE_LIMIT`` (``auto`` by default: follow the service's limit; a number of requests
per minute is a ceiling; 0 = no pacing: for the sandbox only). Give a SQLite outbox an
absolute path: a relative ``sqlite:///app.db`` is relative to the
working directory, which ``--chdir`` changes (each worker logs the path it resolved).
"""

from __future__ import annotations

import logging
import os

from flask import Flask, jsonify, request

from cms_outbox import CMSClient, TrackResult

logging.basicConfig(format="[%(process)d] %(name)s: %(message)s")  # warnings and errors
logger = logging.getLogger("gunicorn_app")
logger.setLevel(logging.INFO)


def delivered(result: TrackResult) -> None:
    logger.info("delivered %s", result.event_id)  # the pid shows which flusher sent it


RATE_LIMIT = os.environ.get("CMS_RATE_LIMIT", "auto")

cms = CMSClient(
    rate_limit=RATE_LIMIT if RATE_LIMIT == "auto" else int(RATE_LIMIT), on_delivered=delivered
)
if cms.engine.dialect.name == "sqlite":
    logger.info("outbox: %s", os.path.abspath(cms.engine.url.database or ""))

app = Flask(__name__)


@app.post("/signup/<customer_id>")
def signup(customer_id: str):
    result = cms.track_lead(
        event_name="signup",
        customer_external_id=customer_id,
        click_id=request.args.get("click_id"),
    )
    return jsonify(event_id=result.event_id, pid=os.getpid())


@app.get("/health")
def health():
    return jsonify(pid=os.getpid())
