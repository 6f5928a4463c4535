"""Segmenters: the in-process :class:`~medsam3_core.segmenters.local.LocalSegmenter` and the opening of inputs and
segmenters by the names users type (:mod:`medsam3_core.segmenters.opening`). The HTTP client with the same interface
is :class:`medsam3_core.server.client.RemoteSegmenter`.
"""
