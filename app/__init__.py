"""The Flask application factory: `gunicorn 'app:create_app()'`.

The HTTP contract is in one place: pydantic models (app/schemas.py), named by each view
(app/api.py), drive request and response validation and the OpenAPI document through
spectree (app/openapi.py). spectree over flask-openapi3 and flask-smorest: it validates
pydantic models on a plain Flask app and Blueprint (flask-openapi3 needs its own app class);
it checks a form or a JSON body against the same model on one route, as the contract's lenient
clients need, where flask-openapi3 JSON-decodes every form field (an id such as `123`, `1e5` or
`null` would be changed or refused); flask-smorest describes schemas in marshmallow, a second
schema language beside pydantic; and its document can be OpenAPI 3.0, which the bundled
Swagger UI (4.x) renders. Its one gap, path parameters, is filled by `schemas.PathParameters`.
"""

from __future__ import annotations

from celery import Celery
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.api import api
from app.dashboard import dashboard
from app.errors import register_error_handlers
from app.limits import install_limits
from app.openapi import openapi
from app.ops import ops
from supervisor.config import Settings, load_settings
from supervisor.logs import configure_logging
from supervisor.services import Services
from tasks.factory import create_celery
from tasks.jobs import CeleryJobs

EXTENSION = "session_supervisor"


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """The web process's Celery app, built once from the settings the Flask app was made
    with: tasks go to that broker, with that configuration (Flask's Celery pattern)."""
    celery = create_celery(settings)
    app.extensions["celery"] = celery
    return celery


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
) -> Flask:
    """Build the app from `settings` (default: the environment), or around ready
    `services` (tests). Nothing is read at import."""
    settings = settings or (services.settings if services else load_settings())
    configure_logging()
    app = Flask(__name__)
    install_limits(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
    )
    if settings.trusted_proxy_count:
        count = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)  # type: ignore[method-assign]
    if services is None:
        celery = celery_init_app(app, settings)
        jobs = CeleryJobs(celery, redis_url=settings.redis_url)
        services = Services.from_settings(settings, jobs=jobs)
    app.extensions[EXTENSION] = services
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(openapi)
    app.register_blueprint(ops)
    app.register_blueprint(dashboard)
    return app
