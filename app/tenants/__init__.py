"""Tenants and their API keys: every job belongs to one tenant."""
