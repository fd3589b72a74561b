"""Masterplan core: settings, personas, LLM providers and router, rate limiter, database.

Imports neither Celery nor FastAPI.
"""

__version__ = "0.1.0"
