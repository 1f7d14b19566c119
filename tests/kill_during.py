"""Run the burnlab command line and SIGKILL it at the N-th file operation on a training state.

    python tests/kill_during.py fsync before 2 experiment=burn_unet ...

`fsync`, `replace`, `unlink` or `rmdir` (os functions), `before` or `after` the call; only calls
on paths below a `state/` folder count. It stands in for a power cut at the worst moment: the
torture test (test_crash_safety.py) runs it, then resumes and checks nothing was lost.
"""

import os
import signal
import sys

OPERATION, WHEN, NTH = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = [sys.argv[0], *sys.argv[4:]]
real = getattr(os, OPERATION)
calls = 0


def _path(arg, dir_fd=None) -> str:
    if isinstance(arg, int):  # fsync(fd)
        return os.readlink(f"/proc/self/fd/{arg}")
    path = os.fsdecode(arg)
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path) if dir_fd is not None else path


def kill_on_nth(*args, **kwargs):
    global calls
    target = args[1] if OPERATION == "replace" else args[0]
    counted = f"{os.sep}state{os.sep}" in _path(target, kwargs.get("dir_fd") or kwargs.get("dst_dir_fd"))
    calls += counted
    if counted and calls == NTH and WHEN == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if counted and calls == NTH and WHEN == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result


setattr(os, OPERATION, kill_on_nth)

from burnlab.launch.cli import main  # noqa: E402  after the patch, so every module sees it

main()
