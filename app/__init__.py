"""The Flask application factory: `gunicorn 'app:create_app()'`."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.api import api
from app.errors import register_error_handlers
from app.openapi import openapi
from supervisor.config import Settings, load_settings
from supervisor.logs import configure_logging
from supervisor.service import Jobs, Supervisor

EXTENSION = "session_supervisor"


def create_app(
    settings: Settings | None = None,
    *,
    supervisor: Supervisor | None = None,
    jobs: Jobs | None = None,
) -> Flask:
    """Build the app from `settings` (default: the environment). Nothing is read at import."""
    settings = settings or (supervisor.settings if supervisor else load_settings())
    configure_logging()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
    )
    if settings.trusted_proxy_count:
        count = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)  # type: ignore[method-assign]
    if supervisor is None:
        if jobs is None:
            from tasks.jobs import CeleryJobs

            jobs = CeleryJobs(redis_url=settings.redis_url)
        supervisor = Supervisor.from_settings(settings, jobs=jobs)
    app.extensions[EXTENSION] = supervisor
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(openapi)
    return app
