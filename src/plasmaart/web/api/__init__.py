"""The public JSON API under ``/v1`` (see API.md)."""
