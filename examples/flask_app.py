"""Flask + SQLAlchemy: create the user and track the signup lead in one transaction.

The outbox tables live in the application's database, and ``connection=`` puts the
event in the same transaction as the user row: a signup that fails (here: an e-mail
already registered) leaves neither the user nor the event.

Run it against the local sandbox (three shells)::

    cms-outbox sandbox --port 8765 --token dev-token
    CMS_BEARER_TOKEN=dev-token CMS_HOST=http://127.0.0.1:8765 \
        CMS_OUTBOX_URL=sqlite:///app.db flask --app examples/flask_app.py run
    curl -X POST localhost:5000/signup -H 'Content-Type: application/json' \
        -d '{"email": "jane@example.com", "name": "Jane Doe", "click_id": "clk_123"}'

Environment: ``CMS_BEARER_TOKEN``, ``CMS_HOST``, ``CMS_OUTBOX_URL`` (the application's
database, SQLite or PostgreSQL) and ``CMS_RATE_LIMIT`` (requests per minute, 0 = no
pacing: for the sandbox only).
"""

from __future__ import annotations

import os
import uuid

from flask import Flask, jsonify, request
from sqlalchemy import String, create_engine
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
cms = CMSClient(database_url=DATABASE_URL, rate_limit=int(os.environ.get("CMS_RATE_LIMIT", "60")))
engine = create_engine(DATABASE_URL)
Base.metadata.create_all(engine)  # in a real application: your own Alembic migrations

app = Flask(__name__)


@app.post("/signup")
def signup():
    data = request.get_json(force=True)
    user_id = uuid.uuid4().hex
    try:
        with Session(engine) as session, session.begin():
            session.add(User(id=user_id, email=data["email"], name=data.get("name", "")))
            result = cms.track_lead(
                event_name="signup",
                customer_external_id=user_id,
                click_id=data.get("click_id"),
                customer_name=data.get("name"),
                customer_email=data["email"],
                connection=session,  # stored only if this transaction commits
            )
            # The commit flushes the INSERT of the user: a duplicate e-mail fails there,
            # after the event was written, and rolls both back.
    except IntegrityError:
        return jsonify(error="email already registered"), 409
    except ValidationError as exc:  # nothing was written
        return jsonify(error=str(exc), field=exc.field), 422
    return jsonify(user_id=user_id, event_id=result.event_id), 201
