"""A stand-in for Slicer's ``PythonSlicer`` (CTKAppLauncher): it starts the real interpreter as its child and dies
at once on SIGINT or SIGTERM without passing the signal on, so the child lives on. The module must stop the whole
process tree, not only the process it started.

Usage: ``python launcher.py PYTHON ARGS...``. The child runs in its own session (POSIX), so a signal sent to the
launcher's process group does not reach it either.
"""

import os
import signal
import subprocess
import sys


def main() -> int:
    kwargs = {} if sys.platform == "win32" else {"start_new_session": True}
    child = subprocess.Popen(sys.argv[1:], **kwargs)
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), lambda *_: os._exit(1))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
