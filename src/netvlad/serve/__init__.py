"""The localisation service and HTML reports.

Parts: ``localize`` (photo → top-k database images and an estimated location: the object
``netvlad query --json`` prints and ``POST /localize`` returns), ``batching`` (micro-batches of
concurrent requests for the model, run off the event loop), ``app`` (the ASGI application:
``/localize``, ``/healthz``, ``/api/index``, thumbnails and the page with the map; needs the
``serve`` extra), ``upload`` (the app's ``POST /localize`` form → a job for the model), ``report``
(HTML pages for ``evaluate --html`` and ``query --html``).
Importing this package imports neither FastAPI nor the model code.
"""

from __future__ import annotations

from netvlad.serve.localize import (
    check_model_for_index,
    db_image_paths,
    describe_images,
    index_max_side,
    index_summary,
    localize_descriptors,
    search_images,
)

__all__ = [
    "check_model_for_index",
    "db_image_paths",
    "describe_images",
    "index_max_side",
    "index_summary",
    "localize_descriptors",
    "search_images",
]
