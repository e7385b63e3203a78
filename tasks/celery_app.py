"""The `celery -A tasks.celery_app` target: the worker's and beat's app, from the environment."""

from supervisor.config import load_settings
from tasks.factory import create_celery

app = create_celery(load_settings())
