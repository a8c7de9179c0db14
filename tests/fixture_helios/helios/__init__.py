"""The elections app. Exposes the Celery app so ``celery --app helios`` finds it."""

from .celery_app import app as celery_app

__all__ = ("celery_app",)
