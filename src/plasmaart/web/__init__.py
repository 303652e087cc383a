"""The HTTP edge: the app factory, the API routers and (later) the dashboard."""
