"""Announced catalog changes: scheduling, withdrawing, and the notices they owe."""
