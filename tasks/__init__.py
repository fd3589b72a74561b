"""Celery tasks: thin wrappers that decode ids, call the core and map waits to retries."""
