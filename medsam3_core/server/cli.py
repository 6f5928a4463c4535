"""``medsam3 serve``: load a model once, keep it warm on the GPU, and serve segmentation jobs over HTTP.

Secure by default: it listens on 127.0.0.1 unless ``--host`` says otherwise, always requires an API key
(``--api-key`` or ``MEDSAM3_API_KEY``; without either a random key is generated and printed once), and
``--no-auth`` is refused unless the address is loopback, where only users of this machine can connect.
The socket is bound before the model loads, so a taken port fails in a second, not after a minute of loading.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from medsam3_core.errors import Cancelled, MedSam3Error
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.signals import cancel_on_signals

__all__ = ["add_arguments", "run", "main", "API_KEY_ENV", "MIN_KEY_LENGTH"]

API_KEY_ENV = "MEDSAM3_API_KEY"
MIN_KEY_LENGTH = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medsam3 serve``."""
    parser.add_argument("--model", default="demo", help="model to serve: 'demo' or a checkpoint path (default: demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"key clients must send (default: ${API_KEY_ENV}; if unset, a random key is generated and printed)",
    )
    parser.add_argument("--no-auth", action="store_true", help="accept requests without a key (loopback hosts only)")
    parser.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest accepted upload (default: 1024)")
    parser.add_argument(
        "--queue-size", type=int, default=4, help="jobs that may wait behind the running one (default: 4)"
    )
    parser.add_argument(
        "--max-voxels",
        type=int,
        default=None,
        help="largest accepted volume in voxels (default: 2**29, e.g. 2048 slices of 512x512)",
    )
    parser.add_argument(
        "--result-ttl", type=float, default=600.0, help="seconds an undownloaded result is kept (default: 600)"
    )
    parser.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM) to serve https://")
    parser.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM) matching --ssl-certfile")


def _api_key(args: argparse.Namespace) -> Optional[str]:
    """The key to require, ``None`` for an allowed ``--no-auth``; a :class:`MedSam3Error` for unsafe settings."""
    from medsam3_core.server.runner import is_loopback

    if args.no_auth:
        if not is_loopback(args.host):
            raise MedSam3Error(
                f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), not {args.host}: "
                "anyone on the network could use the GPU and send you data. Set an API key instead."
            )
        return None
    key = args.api_key or os.environ.get(API_KEY_ENV)
    if not key:
        key = secrets.token_urlsafe(24)
        print(
            f"No API key given; clients must use this one (valid until the server stops): {key}\n"
            f"Set {API_KEY_ENV} or --api-key to keep a fixed key.",
            file=sys.stderr,
        )
    elif len(key) < MIN_KEY_LENGTH:
        raise MedSam3Error(
            f"The API key is too short ({len(key)} characters, at least {MIN_KEY_LENGTH}); make one with: "
            'python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return key


def _validate(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise MedSam3Error(f"--port must be between 0 and 65535, got {args.port}.")
    too_small = args.max_voxels is not None and args.max_voxels < 1
    if args.max_upload_mb <= 0 or args.queue_size < 1 or args.result_ttl <= 0 or too_small:
        raise MedSam3Error("--max-upload-mb, --max-voxels and --result-ttl must be positive, --queue-size at least 1.")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise MedSam3Error("--ssl-certfile and --ssl-keyfile must be given together.")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path and not os.path.isfile(path):
            raise MedSam3Error(f"TLS file not found: {path}")


def _warm_segmenter(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Load the model once and run it once (torch and transformers are imported here, after the port is bound)."""
    from medsam3_core.segmenters.local import LocalSegmenter
    from medsam3_core.model.bundle import load_model

    print(f"Loading model {args.model!r} on {args.device} …", file=sys.stderr)
    bundle = load_model(args.model, device=args.device)
    segmenter = LocalSegmenter(bundle)
    # One tiny job now, so a model that cannot run fails here and the first user's job does not pay for CUDA
    # initialisation and kernel selection.
    started = time.perf_counter()
    segmenter.segment(Volume(np.zeros((1, 64, 64), np.float32)), ["warm-up"], SegmentOptions(mode="detect"))
    print(f"Warm-up inference took {time.perf_counter() - started:.1f} s.", file=sys.stderr)
    info = {
        "source": bundle.source,
        "device": str(bundle.device),
        "dtype": str(bundle.dtype).replace("torch.", ""),
        "tracker": bool(bundle.has_tracker),
        "image_size": int(bundle.image_size),
    }
    return segmenter, info


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 after a clean shutdown, 2 for a user error (one line on stderr), 3 when a signal
    (Ctrl-C, SIGTERM, SIGHUP) arrives before the server is ready. Once it serves, those signals are its normal stop:
    the running job is cancelled, waiting ones are dropped, and it exits with 0."""
    from medsam3_core.server.app import DEFAULT_MAX_VOXELS, create_app
    from medsam3_core.server.runner import bind_socket, is_loopback, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _validate(args)
        api_key = _api_key(args)
        sock = bind_socket(args.host, args.port)
    except MedSam3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # A server lives on between jobs, so memory a job freed should go back to the operating system instead of staying
    # reserved for the next batch (medsam3_core/engine/allocator.py); MEDSAM3_MALLOC_TUNING=1 keeps the tuning.
    os.environ.setdefault("MEDSAM3_MALLOC_TUNING", "0")
    with sock, cancel_on_signals() as signals:
        try:
            with signals.immediately():  # loading holds nothing worth waiting for: a signal stops it at once
                segmenter, model_info = _warm_segmenter(args)
            signals.token.raise_if_cancelled()
        except Cancelled:
            print("Cancelled while loading the model; the server did not start.", file=sys.stderr)
            return 3
        except MedSam3Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        app = create_app(
            segmenter,
            api_key=api_key,
            max_upload_mb=args.max_upload_mb,
            queue_size=args.queue_size,
            result_ttl_s=args.result_ttl,
            max_voxels=args.max_voxels or DEFAULT_MAX_VOXELS,
            model_info=model_info,
        )
        scheme = "https" if args.ssl_certfile else "http"
        if scheme == "http" and not is_loopback(args.host):
            print(
                f"warning: serving plain HTTP on {args.host}: images and the API key cross the network unencrypted. "
                "Use --ssl-certfile/--ssl-keyfile, a TLS reverse proxy or an SSH tunnel.",
                file=sys.stderr,
            )
        port = sock.getsockname()[1]
        print(
            f"Medical SAM3 server ready at {scheme}://{args.host}:{port} (model: {model_info['source']})",
            file=sys.stderr,
        )
        with contextlib.suppress(KeyboardInterrupt):
            serve(app, sock, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, stop=signals.token)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="medsam3 serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
