"""The one execution path of a run: resolve the prompts as the command line does, get an endpoint, and segment
through the core's HTTP client (``RemoteSegmenter``), whether the server is the module's local child or remote.

These functions build the work a :class:`~MedicalSAM3SlicerLib.thread.ThreadJob` runs off the GUI thread; the core
is imported when they run, never when Slicer loads the module (it may not be installed yet).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from .local_server import Endpoint

__all__ = ["segmentation_work", "connection_work", "EndpointSource"]

#: ``source(progress, cancel) -> Endpoint``: the remote server as configured, or the warm local child (started on
#: first use, which may take a while and can be cancelled).
EndpointSource = Callable[[Callable[[str, float], None], Any], Endpoint]


def segmentation_work(
    source: EndpointSource,
    volume: Any,
    prompts: Sequence[str],
    options: Any,
    server_died: Callable[[], Optional[Exception]] = lambda: None,
) -> Callable[[Callable[[str, float], None], Any], Any]:
    """Work for a ``ThreadJob``: ``work(progress, cancel) -> SegmentationResult``.

    Prompts go through ``medsam3_core.prompts.resolve_prompts`` exactly as ``medsam3 infer`` sends them: each prompt
    keeps its own label (duplicates too), the model reads the resolved concept, and the result carries the CLI's
    warning for prompts that mean the same concept. ``server_died`` turns a lost connection to a local child that
    crashed (torch DLL error, out of memory) into the child's own exit code and last log line.
    """

    def work(progress: Callable[[str, float], None], cancel: Any) -> Any:
        from medsam3_core.errors import RemoteError
        from medsam3_core.prompts import resolve_prompts
        from medsam3_core.segmenters.predict import segment_resolved
        from medsam3_core.server.client import RemoteSegmenter

        resolutions = resolve_prompts(prompts)
        endpoint = source(progress, cancel)
        client = RemoteSegmenter(endpoint.url, api_key=endpoint.api_key)
        try:
            return segment_resolved(client, volume, resolutions, options, progress, cancel)
        except RemoteError:
            died = server_died()
            if died is not None:
                raise died from None
            raise

    return work


def connection_work(url: str, api_key: str) -> Callable[[Callable[[str, float], None], Any], Any]:
    """Work for a ``ThreadJob`` behind "Test connection": the server's ``/v1/info`` (a dict), off the GUI thread."""

    def work(progress: Callable[[str, float], None], cancel: Any) -> Any:
        from medsam3_core.server.client import RemoteSegmenter

        return RemoteSegmenter(url, api_key=api_key or None, timeout=10).check_connection()

    return work
