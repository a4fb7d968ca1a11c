"""OS-level confinement of a sandbox worker, applied once at worker start.

Runs inside the worker before it accepts any code (standard library only).
Layers, each reported back to the parent so users can see what applied:

- ``netns``: a fresh network namespace with only a down loopback (needs root,
  or unprivileged user namespaces);
- ``rlimits``: address space, open files, file size, no new processes, no core
  dumps; the CPU limit is set per exec by the worker;
- ``chroot``: a worker started as root is locked into its private working
  directory (everything it needs is imported before), so the host's files,
  /tmp and /proc do not exist for it; that directory is a size-capped tmpfs in
  a private mount namespace (``tmpfs``), so files cannot fill the host's disk;
- ``uid``: a worker started as root drops to an unprivileged user (root ignores
  RLIMIT_NPROC and can read every file);
- ``no_new_privs`` and non-dumpable (no ptrace by other sandbox workers);
- ``seccomp``: a filter that refuses sockets, process creation, exec, signals
  to other processes, namespaces, mounts and ptrace (x86_64). rlimit calls stay
  allowed: the worker moves its soft CPU limit per exec, and an unprivileged
  process can never raise a hard limit.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import struct
from typing import Any

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2

# x86_64 syscall numbers refused with EPERM.
_DENY_X86_64 = {
    "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "ptrace": 101,
    "mknod": 133, "personality": 135, "pivot_root": 155, "chroot": 161,
    "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "tkill": 200, "tgkill": 234, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "mknodat": 259, "unshare": 272,
    "accept4": 288, "perf_event_open": 298, "rt_tgsigqueueinfo": 297,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "execveat": 322, "userfaultfd": 323,
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "clone3": 435, "rt_sigqueueinfo": 129,
}
_AUDIT_ARCH_X86_64 = 0xC000003E


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare_net(libc: ctypes.CDLL) -> bool:
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    return libc.unshare(flags) == 0


def _set_rlimits(limits: dict[str, Any]) -> None:
    mem = int(limits["memory_mb"]) * 1024 * 1024
    fsize = int(limits["max_file_mb"]) * 1024 * 1024
    nofile = int(limits["max_open_files"])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = int(limits["cpu_total_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


def _private_tmpfs(libc: ctypes.CDLL, path: str, size_mb: int, uid: int, gid: int) -> bool:
    """Mount a size-capped tmpfs over ``path`` in a new mount namespace (root only);
    it vanishes with the worker."""
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    options = f"size={size_mb}m,mode=0700,uid={uid},gid={gid}".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    return libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, options) == 0


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("failed to drop privileges")


def _seccomp_filter() -> bytes | None:
    """Classic BPF program: allow everything except the denylist (EPERM)."""
    if platform.machine() != "x86_64":
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    deny = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
    nrs = sorted(set(_DENY_X86_64.values()))
    prog: list[tuple[int, int, int, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH_X86_64),
        (ret, 0, 0, kill),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, len(nrs) + 1, 0, 0x40000000),  # x32 ABI -> deny
    ]
    for i, nr in enumerate(nrs):
        prog.append((jeq, len(nrs) - i, 0, nr))
    prog.append((ret, 0, 0, allow))
    prog.append((ret, 0, 0, deny))
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def _install_seccomp(libc: ctypes.CDLL) -> bool:
    code = _seccomp_filter()
    if code is None:
        return False
    buf = ctypes.create_string_buffer(code)

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(len(code) // 8, ctypes.addressof(buf))
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0


def apply(config: dict[str, Any]) -> dict[str, Any]:
    """Confine the current process; returns what was applied."""
    libc = _libc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Writing past RLIMIT_FSIZE then fails with EFBIG instead of killing the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    report: dict[str, Any] = {
        "netns": False, "tmpfs": False, "chroot": False, "uid": os.getuid(), "seccomp": False, "no_new_privs": False,
    }
    if config.get("network_isolation", True):
        report["netns"] = _unshare_net(libc)
    _set_rlimits(config["limits"])
    if os.geteuid() == 0 and config.get("chroot", True):
        size = int(config["limits"].get("max_disk_mb", 256))
        report["tmpfs"] = _private_tmpfs(libc, config["workdir"], size, int(config["uid"]), int(config["gid"]))
    os.chdir(config["workdir"])
    os.umask(0o077)
    if os.geteuid() == 0 and config.get("chroot", True):
        os.chroot(config["workdir"])
        os.chdir("/")
        report["chroot"] = True
    if os.geteuid() == 0:
        _drop_privileges(int(config["uid"]), int(config["gid"]))
    report["uid"] = os.getuid()
    report["no_new_privs"] = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if config.get("seccomp", True) and report["no_new_privs"]:
        report["seccomp"] = _install_seccomp(libc)
    return report
