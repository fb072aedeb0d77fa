"""FastAPI: track from async endpoints without blocking the event loop.

``track_lead``/``track_sale`` are a short database write (an fsynced INSERT that may
wait for a SQLite write lock), so async endpoints await ``atrack_lead``/``atrack_sale``,
which run them in a worker thread: the event loop only awaits. (Plain ``def`` endpoints
can call ``track_lead``: FastAPI already runs them in its thread pool.)

Run it against the local sandbox, after ``pip install fastapi uvicorn``::

    cms-outbox sandbox --port 8765 --token dev-token
    CMS_BEARER_TOKEN=dev-token CMS_HOST=http://127.0.0.1:8765 \
        uvicorn --app-dir examples fastapi_app:app
    curl -X POST localhost:8000/purchases -H 'Content-Type: application/json' \
        -d '{"customer_id": "user_42", "click_id": "clk_1", "invoice_id": "inv_1",
             "amount": 4999, "currency": "USD"}'

Environment: ``CMS_BEARER_TOKEN``, ``CMS_HOST``, ``CMS_OUTBOX_URL`` and
``CMS_RATE_LIMIT`` (``auto`` by default: follow the service's limit; a number of requests
per minute is a ceiling; 0 = no pacing: for the sandbox only).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cms_outbox import CMSClient, TrackResult, ValidationError


class Signup(BaseModel):
    customer_id: str
    click_id: str
    email: str


class Purchase(BaseModel):
    customer_id: str
    click_id: str
    invoice_id: str
    amount: int  # cents
    currency: str


RATE_LIMIT = os.environ.get("CMS_RATE_LIMIT", "auto")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per worker process, with its background flusher.
    app.state.cms = CMSClient(rate_limit=RATE_LIMIT if RATE_LIMIT == "auto" else int(RATE_LIMIT))
    yield
    await app.state.cms.aclose()  # a bounded final flush


app = FastAPI(lifespan=lifespan)


@app.exception_handler(ValidationError)
async def invalid_event(request: Request, exc: ValidationError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=422)


def tracked(result: TrackResult) -> dict[str, str]:
    return {"event_id": result.event_id, "state": result.state.value}


@app.post("/signups")
async def signup(body: Signup, request: Request) -> dict[str, str]:
    cms: CMSClient = request.app.state.cms
    result = await cms.atrack_lead(
        event_name="signup",
        customer_external_id=body.customer_id,
        click_id=body.click_id,
        customer_email=body.email,
    )
    return tracked(result)


@app.post("/purchases")
async def purchase(body: Purchase, request: Request) -> dict[str, str]:
    cms: CMSClient = request.app.state.cms
    result = await cms.atrack_sale(
        event_name="purchase",
        customer_external_id=body.customer_id,
        click_id=body.click_id,
        invoice_id=body.invoice_id,
        amount=body.amount,
        currency=body.currency,
    )
    return tracked(result)
