"""Subscriptions and payments: plans over time, and the credits they grant."""
