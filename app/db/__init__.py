"""Database plumbing: the declarative base and the session factory."""

from app.db.base import Base
from app.db.session import make_engine, make_session_factory

__all__ = ["Base", "make_engine", "make_session_factory"]
