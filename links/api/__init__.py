"""The master's JSON API under /api/v1/ (links/api/views.py)."""
