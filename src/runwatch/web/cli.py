"""``runwatch serve``: the web application (for now the JSON API) under uvicorn."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this feature's commands to ``app``."""
    app.command("serve")(serve)
    from runwatch.web.accounts_cli import web_app

    app.add_typer(web_app, name="web")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Server processes sharing the port (one Python process uses one core).",
    ),
) -> None:
    """Serve the web application and the JSON API (POST /api/v1/messages)."""
    import uvicorn

    if workers > 1:
        # Each process builds its own app (its own database pool, page cache and live
        # updates) from the deployment in force; uvicorn restarts one that dies.
        uvicorn.run(
            "runwatch.web.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        return

    from runwatch.context import Context
    from runwatch.web.app import create_app
    from runwatch.web.live import Server

    ctx = Context.load()
    try:
        # proxy_headers=False: the client address must stay the direct peer's, which is
        # what [web] trusted_proxies is checked against (uvicorn would otherwise replace it
        # by X-Forwarded-For from a local proxy).
        config = uvicorn.Config(
            create_app(ctx.settings, ctx.db),
            host=host,
            port=port,
            log_level="info",
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        Server(config).run()  # uvicorn's, ending the live-update streams when stopping
    finally:
        ctx.db.dispose()
