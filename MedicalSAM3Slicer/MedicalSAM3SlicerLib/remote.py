"""How the module describes a remote Medical SAM3 server after "Test connection"."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_server"]


def describe_server(info: dict[str, Any]) -> str:
    """One status line from ``RemoteSegmenter.check_connection()`` (the server's ``/v1/info``), e.g.
    ``Connected to Medical SAM3 server 0.1.0: model demo on cuda; 1 running, 2 waiting.``"""
    model = info.get("model")
    facts = model if isinstance(model, dict) else {"model": model}
    what = facts.get("model") or facts.get("source") or "unknown model"
    device = facts.get("device")
    queue = info.get("queue") if isinstance(info.get("queue"), dict) else {}
    text = f"Connected to Medical SAM3 server {info.get('version', '?')}: model {what}"
    if device:
        text += f" on {device}"
    if queue:
        text += f"; {queue.get('running', 0)} running, {queue.get('queued', 0)} waiting"
    return text + "."
