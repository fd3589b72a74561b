"""SQLAlchemy models, engine/session factory and query functions."""
