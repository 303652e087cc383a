"""Outbound webhooks for API users (docs/webhooks.md), on the Standard
Webhooks specification: endpoints with event filters and ``whsec_`` secrets,
the account's own secret for per-generation ``webhook_url``s, and the
dispatcher that delivers ``webhook_events`` (written by ``outbox.webhooks``)
at least once, signed, with backoff."""
