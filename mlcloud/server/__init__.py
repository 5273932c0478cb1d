"""``mlcloud server``: one FastAPI app for a team (DESIGN.md §10).

The control-plane API (``/v1/jobs``, ``/v1/endpoints``, ``/v1/models``) calls :mod:`mlcloud.api`
and nothing else of the core; the predict gateway is :mod:`mlcloud.server.gateway`. Importing
this package is cheap (no FastAPI): :func:`mlcloud.server.app.create_app` builds the app.
"""

from __future__ import annotations
