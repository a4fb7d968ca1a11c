"""The sandbox worker's private working directories, and the ones dead parents left behind.

Directories are named after the parent's pid, and the parent holds an flock on its
directory for as long as it lives, so a later sandbox can tell (and remove) those left
behind by a parent that was killed before its finalizer could run.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import stat
import tempfile

# Working directories are named after the parent's pid, and the parent holds an flock on
# its directory for as long as it lives, so a later sandbox can tell (and remove) those
# left behind by a parent that was killed before its finalizer could run.
WORKDIR_PREFIX = "loopagent-sandbox-"
_WORKDIR_NAME = re.compile(r"loopagent-sandbox-([0-9]{1,10})-[a-z0-9_]+")


def sandbox_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def lock_workdir(path: str) -> int | None:
    """Hold an exclusive flock on ``path`` for this process's life (the kernel drops it
    when the process dies, however it dies); None where the filesystem has no flock."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or not a pid at all): not ours to judge
    return True


def remove_stale_workdirs(owners: set[int]) -> None:
    """Remove ``loopagent-sandbox-<pid>-*`` directories of parents that died without
    cleaning up (SIGKILL, the OOM killer: no finalizer runs).

    A directory is removed only when its name matches, it is a real directory (not a
    symlink) owned by ``owners`` (this user, or the sandbox user a root parent hands it
    to), its pid is gone, and its flock can be taken: a live owner holds that lock, which
    also covers a live parent in another pid namespace sharing this /tmp, and a reused
    pid only keeps a stale directory, never removes a live one. Two sandboxes cleaning up
    at once cannot both hold the lock; the loser finds the directory gone or locked.
    """
    me = os.getpid()
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        match = _WORKDIR_NAME.fullmatch(entry.name)
        if match is None or int(match.group(1)) == me or _pid_alive(int(match.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # removed by another sandbox meanwhile, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Still the directory that was checked (not one renamed into its place)?
            if os.path.samestat(os.fstat(fd), os.stat(entry.path, follow_symlinks=False)):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass  # locked: its owner is alive
        finally:
            os.close(fd)
