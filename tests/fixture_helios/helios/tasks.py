"""Background tasks run by the Celery worker."""

from celery import shared_task


@shared_task
def echo(value):
    """Return ``value``: enough to see a task make the round trip through the broker."""
    return value
