"""The HTTP API (FastAPI): submit jobs, read them back, see the providers."""
