"""Signed webhook callbacks (Standard Webhooks) for job events."""
