"""The front's FastAPI app: one error body, admission control, request metrics, the OpenAPI document, the page.

``create_app(settings)`` before the service's routes are declared on it (``app.state.gate``
counts its model requests in flight, for admission and the drain on SIGTERM);
``add_fallbacks(app)`` after them (the catch-all must come last).
"""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI

from front import admission, errors, metrics, openapi, pages
from serving.draining import Gate
from serving.settings import ServerSettings


def create_app(settings: ServerSettings, description: str) -> FastAPI:
    app = FastAPI(
        title="ARR-COC",
        version=version("arr-coc"),
        description=description,
        openapi_url="/docs.json",
        docs_url=None,
        redoc_url=None,
        responses=openapi.ERROR_RESPONSES,
    )
    errors.install(app)
    app.state.gate = Gate()
    admission.admit(app, settings.max_concurrency, app.state.gate)
    metrics.count_requests(app)  # outermost: counts the 429s too
    app.openapi = openapi.document(app)
    return app


def add_fallbacks(app: FastAPI) -> None:
    """The web page at ``/`` and its static files, then JSON 404/405 for every path no route takes."""
    app.mount("/static", pages.static_files(), name="static")
    app.add_api_route("/", pages.index, include_in_schema=False)
    app.add_api_route("/{path:path}", errors.not_found, methods=errors.ALL_METHODS, include_in_schema=False)
