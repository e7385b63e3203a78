"""The `celery -A tasks.celery_app` target."""

from tasks.factory import create_celery

app = create_celery()
