"""Alembic migrations; shipped as a package so `poolq migrate` finds them when installed."""
