"""Generations: submission, job states, the queue and its scheduling, the
worker, and the model providers (DESIGN.md §4)."""
