"""The HTTP layer: REST API, web UI and metrics (see :mod:`app.api.app`)."""
