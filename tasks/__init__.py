"""Celery entry point: ``celery -A tasks worker|beat|flower``. Only the worker processes' Celery app instance
(:mod:`tasks.celery_app`) and the thin task modules live here; the rules are in ``app/``."""

from tasks.celery_app import app

__all__ = ["app"]
