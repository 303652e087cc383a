"""fal.ai: the queue client, its webhooks, and the arguments each model takes."""
