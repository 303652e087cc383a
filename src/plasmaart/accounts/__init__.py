"""Users, their roles and status, and the audit log of what admins do to them."""
