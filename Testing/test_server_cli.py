"""``medsam3 serve``: unsafe settings are refused in one line, and the real command serves the CLI's ``--server``.

The end-to-end test runs the real server: ``python -m medsam3_core.server`` (= ``medsam3 serve``) on a
free loopback port plus ``python -m medsam3_core.volume infer scan.nii.gz … --server URL`` writes the same label map
as local inference.
"""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3_core.server import cli

KEY = "cli-test-key-0123456789"


def _serve(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_no_auth_is_refused_on_a_network_address(capsys):
    code, err = _serve(capsys, "--host", "0.0.0.0", "--no-auth")
    assert code == 2 and "--no-auth is only allowed on a loopback host" in err and "Traceback" not in err


def test_short_key_and_bad_settings_are_refused(capsys, monkeypatch):
    monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    code, err = _serve(capsys, "--api-key", "short")
    assert code == 2 and "too short (5 characters, at least 16)" in err
    monkeypatch.setenv(cli.API_KEY_ENV, "also-short")
    assert _serve(capsys)[0] == 2
    assert _serve(capsys, "--api-key", KEY, "--queue-size", "0")[0] == 2
    assert _serve(capsys, "--api-key", KEY, "--max-voxels", "0")[0] == 2
    code, err = _serve(capsys, "--api-key", KEY, "--ssl-certfile", "cert.pem")
    assert code == 2 and "must be given together" in err


def test_taken_port_is_reported_before_the_model_loads(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_warm_segmenter", lambda *a: pytest.fail("model loaded before the port was bound"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        code, err = _serve(capsys, "--api-key", KEY, "--port", str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert code == 2 and "Cannot listen on 127.0.0.1" in err and "choose another --port" in err


def _infer(tmp_path, name, scan, *extra):
    """``python -m medsam3_core.volume infer`` in this process (the server is the separate process under test)."""
    from medsam3_core.cli import infer as volume

    out = tmp_path / name
    argv = ["infer", str(scan), "kidney", "liver", "-o", str(out), "--device", "cpu", "--mode", "detect",
            "--threshold", "0", "--progress", "none", "--quiet", *extra]  # fmt: skip
    assert volume.main(argv) == 0
    return sitk.ReadImage(str(out / "labels.nii.gz")), json.loads((out / "report.json").read_text())


def _start_server():
    """``python -m medsam3_core.server`` (= ``medsam3 serve``) on a free port; returns the process and its URL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", cli.API_KEY_ENV: KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "medsam3_core.server", "--model", "demo", "--device", "cpu", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stderr], daemon=True).start()
    deadline, log = time.monotonic() + 180, []
    while time.monotonic() < deadline and server.poll() is None:
        try:
            log.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        match = re.search(r"ready at (http://127\.0\.0\.1:\d+)", log[-1])
        if match:
            return server, match.group(1)
    server.kill()
    server.wait(10)
    raise AssertionError("server did not start:\n" + "".join(log))


@pytest.mark.slow
def test_serve_and_infer_with_server_equal_local_inference(tmp_path):
    from medsam3_core.io.reading import write_volume
    from medsam3_core.phantom import make_abdomen_phantom

    scan = tmp_path / "scan.nii.gz"
    write_volume(make_abdomen_phantom(0, (6, 40, 48), (2.0, 2.0, 5.0))[0], scan)
    server, url = _start_server()
    try:
        remote_image, remote_report = _infer(tmp_path, "remote", scan, "--server", url, "--api-key", KEY)
        local_image, local_report = _infer(tmp_path, "local", scan)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    remote, local = sitk.GetArrayFromImage(remote_image), sitk.GetArrayFromImage(local_image)
    assert local.any(), "threshold 0 must give a non-empty label map, otherwise the comparison proves nothing"
    assert np.array_equal(remote, local)
    assert remote_image.GetOrigin() == local_image.GetOrigin()
    assert remote_image.GetSpacing() == local_image.GetSpacing()
    assert remote_image.GetDirection() == local_image.GetDirection()
    assert remote_report["segments"] == local_report["segments"]
    assert server.returncode == 0, "Ctrl+C must stop the server cleanly"
