"""Tideflow: durable DAG workflows on Celery, Redis and SQLAlchemy."""

__version__ = "0.1.0"
