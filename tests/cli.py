"""Run `entigraph` as a user does: a separate process, from a given folder."""
import subprocess
import sys


def entigraph(*args, cwd, wait=True, timeout=900):
    """The finished process (output captured), or with wait=False the running one."""
    command = [sys.executable, "-m", "entigraph", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
