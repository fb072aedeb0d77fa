"""Flask + SQLAlchemy: create the user and track the signup lead in one transaction.

The outbox tables live in the application's database, and ``connection=`` puts the
event in the same transaction as the user row: a signup that fails (here: an e-mail
already registered) leaves neither the user nor the event.

A lead is tracked only for a signup that came from a click (``click_id``): CMS
attributes a lead without ``clickId`` through an earlier deferred association of that
customer, and a new user has none, so the service would reject it and the event would
end dead. A signup without ``click_id`` creates the user and tracks nothing
(``"tracked": false``). A body without ``email`` gets a 400 naming the field.

Use an absolute path for a SQLite database (``sqlite:////var/lib/app/app.db``): a
relative one is relative to the working directory of whatever starts the app. The app
prints the resolved path at start.

Run it against the local sandbox (three shells), after ``pip install flask``::

    cms-outbox sandbox --port 8765 --token dev-token
    CMS_BEARER_TOKEN=dev-token CMS_HOST=http://127.0.0.1:8765 \
        CMS_OUTBOX_URL=sqlite:///$PWD/app.db flask --app examples/flask_app.py run
    curl -X POST localhost:5000/signup -H 'Content-Type: application/json' \
        -d '{"email": "jane@example.com", "name": "Jane Doe", "click_id": "clk_123"}'

Environment: ``CMS_BEARER_TOKEN``, ``CMS_HOST``, ``CMS_OUTBOX_URL`` (the application's
database, SQLite or PostgreSQL) and ``CMS_RATE_LIMIT`` (``auto`` by default: follow the
service's limit; a number of requests per minute is a ceiling; 0 = no pacing: for the
sandbox only).
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import String, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cms_outbox import CMSClient, ValidationError

DATABASE_URL = os.environ.get("CMS_OUTBOX_URL", "sqlite:///app.db")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")


# One client per process; its background flusher delivers what the handlers commit.
# It reads CMS_BEARER_TOKEN and CMS_HOST, and migrates its tables on first use. Created
# before the engine so that a new SQLite file gets the outbox's private mode (0600).
RATE_LIMIT = os.environ.get("CMS_RATE_LIMIT", "auto")

cms = CMSClient(
    database_url=DATABASE_URL, rate_limit=RATE_LIMIT if RATE_LIMIT == "auto" else int(RATE_LIMIT)
)
engine = create_engine(DATABASE_URL)
Base.metadata.create_all(engine)  # in a real application: your own Alembic migrations

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
logger = logging.getLogger("flask_app")
if engine.dialect.name == "sqlite":
    logger.info("database: %s", os.path.abspath(make_url(DATABASE_URL).database or ""))

app = Flask(__name__)


@app.post("/signup")
def signup():
    data: Any = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        return jsonify(error="the body must be a JSON object", field=None), 400
    email, name, click_id = data.get("email"), data.get("name") or "", data.get("click_id")
    if not isinstance(email, str) or not email.strip():
        return jsonify(error="email is required (a non-empty string)", field="email"), 400
    user_id = uuid.uuid4().hex
    event_id = None
    try:
        with Session(engine) as session, session.begin():
            session.add(User(id=user_id, email=email, name=name))
            if click_id is not None:  # an organic signup has nothing to attribute
                result = cms.track_lead(
                    event_name="signup",
                    customer_external_id=user_id,
                    click_id=click_id,
                    customer_name=name or None,
                    customer_email=email,
                    connection=session,  # stored only if this transaction commits
                )
                event_id = result.event_id
            # The commit flushes the INSERT of the user: a duplicate e-mail fails there,
            # after the event was written, and rolls both back.
    except IntegrityError:
        return jsonify(error="email already registered", field="email"), 409
    except ValidationError as exc:  # nothing was written
        return jsonify(error=str(exc), field=exc.field), 422
    return jsonify(user_id=user_id, event_id=event_id, tracked=event_id is not None), 201
