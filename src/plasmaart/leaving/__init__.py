"""Leaving: the export of an account's data (``export``) and the deletion of
an account (``deletion``), with what is kept and why (docs/accounts.md)."""
