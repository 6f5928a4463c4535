"""Remote GPU inference: ``medsam3 serve`` (FastAPI app, job queue) and :class:`RemoteSegmenter`, its client.

Submodules are imported explicitly (``from medsam3_core.server.client import RemoteSegmenter``) so that the client
side needs only ``httpx`` while the server side (``app``, ``jobs``, ``runner``, ``cli``) needs the ``server`` extra
(FastAPI, uvicorn, python-multipart). ``wire`` defines what travels between them.
"""

__all__: list[str] = []
