"""The web application: the JSON API now; the shifters' pages join it later.

``create_app`` takes the settings and the database rather than reading them itself, so that
tests and ``runwatch serve`` build the same app; routers find both on ``app.state``.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from runwatch import __version__
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.ingest.api import router as ingest_router
from runwatch.web import actions, api_v1, attempts_api, files, login, pages
from runwatch.web.auth import install_auth
from runwatch.web.cache import ShortCache
from runwatch.web.live import router as live_router
from runwatch.web.pmt_api import router as pmt_router

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, db: Database) -> FastAPI:
    # The API's docs page is served with Swagger UI from our own static files (built by
    # scripts/build-web.sh), not FastAPI's default CDN: the site must work offline.
    app = FastAPI(title="runwatch", version=__version__, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db = db
    app.state.recent_runs = ShortCache(settings.web.cache_seconds)
    app.include_router(ingest_router)
    install_auth(app)
    app.include_router(login.router)
    app.include_router(actions.router)
    app.include_router(api_v1.router)
    app.include_router(attempts_api.router)
    app.include_router(live_router)
    app.include_router(pmt_router)
    app.include_router(files.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        """The interactive API reference (Swagger UI) over /openapi.json."""
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="runwatch API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
        )

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 when the database answers, else 503 (for load balancers and start scripts)."""
        try:
            with db.read_session() as session:
                session.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "error", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    return app


def app_from_environment() -> FastAPI:
    """The app of the deployment in force (``RUNWATCH_CONFIG`` or ./runwatch.toml): what
    each process of ``runwatch serve --workers N`` builds for itself."""
    from runwatch.context import Context

    ctx = Context.load()
    return create_app(ctx.settings, ctx.db)
