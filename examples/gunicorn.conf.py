"""gunicorn settings for ``examples/gunicorn_app.py`` (flags on the command line win).

gunicorn -c examples/gunicorn.conf.py --chdir examples gunicorn_app:app
"""

from __future__ import annotations

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 4  # each with its own background flusher; they share the outbox and its rate limit
# Safe either way: with preload the client is created in the master and every worker
# restarts its flusher after fork.
preload_app = False
# On SIGTERM each worker stops its flusher after a bounded final flush (the HTTP
# attempt timeouts plus a few seconds): give it that long before gunicorn kills it.
graceful_timeout = 30
