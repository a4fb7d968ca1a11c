"""The OS layer on its own: assume the language policy failed and the code is
plain Python in the worker process. What can it still do?"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import loopagent.environments as envs

_WORKER_DIR = str(Path(envs.__file__).resolve().parent)

# Runs after _hardening.apply(): every attempt must fail.
_PROBE = r"""
import json, os, socket, sys
sys.path.append(sys.argv[1])
import _hardening
config = json.loads(sys.argv[2])
report = _hardening.apply(config)
out = {"report": report}

def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except BaseException as e:
        out[name] = type(e).__name__

attempt("socket_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("socket_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("fork", os.fork)
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("kill_parent", lambda: os.kill(os.getppid(), 0))
attempt("read_root_home", lambda: os.listdir("/root"))
attempt("read_secret_file", lambda: open(config["secret_file"]).read())
attempt("write_outside_workdir", lambda: open(config["outside_dir"] + "/pwned", "w").write("x"))
attempt("big_file", lambda: open("big.bin", "wb").write(b"x" * (3 * 1024 * 1024)))
def fill_disk():
    for i in range(4):
        with open(f"part{i}.bin", "wb") as f:
            f.write(b"x" * (900 * 1024))
attempt("fill_disk", fill_disk)
attempt("memory_bomb", lambda: bytearray(2 * 1024 ** 3))
attempt("unshare", lambda: os.unshare(0x40000000) if hasattr(os, "unshare")
        else (_ for _ in ()).throw(PermissionError()))
out["proc_visible"] = os.path.exists("/proc/self")
out["workdir_write"] = "ok" if open("note.txt", "w").write("x") == 1 else "failed"
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the full OS layer (uid drop, netns) applies to workers started as root")
def test_os_layer_contains_plain_python(tmp_path):
    workdir = tempfile.mkdtemp(prefix="loopagent-hardening-test-")
    os.chown(workdir, 65534, 65534)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o600)
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    config = {
        "limits": {"memory_mb": 512, "max_file_mb": 1, "max_open_files": 32, "cpu_total_s": 60, "max_disk_mb": 2},
        "workdir": workdir,
        "uid": 65534,
        "gid": 65534,
        "secret_file": str(secret),
        "outside_dir": str(outside),
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, _WORKER_DIR, json.dumps(config)],
        cwd=workdir, capture_output=True, text=True, timeout=60, env={"PATH": os.defpath},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    report = out["report"]
    assert report["uid"] == 65534 and report["netns"] and report["no_new_privs"] and report["chroot"]
    assert report["tmpfs"]
    if report["seccomp"]:
        assert out["socket_inet"] == "PermissionError"
        assert out["socket_unix"] == "PermissionError"
        assert out["exec"] == "PermissionError"
        assert out["kill_parent"] == "PermissionError"
        assert out["unshare"] == "PermissionError"
    else:
        assert out["exec"] != "allowed"
    assert out["fork"] in ("PermissionError", "BlockingIOError")  # seccomp, or RLIMIT_NPROC=0
    # chroot: the host's files are not there at all
    assert out["read_root_home"] == "FileNotFoundError"
    assert out["read_secret_file"] == "FileNotFoundError"
    assert out["write_outside_workdir"] == "FileNotFoundError"
    assert out["proc_visible"] is False
    assert out["big_file"] == "OSError"  # EFBIG from RLIMIT_FSIZE
    assert out["fill_disk"] == "OSError"  # ENOSPC: the private tmpfs holds 2 MB
    assert out["memory_bomb"] == "MemoryError"
    assert out["workdir_write"] == "ok"
    assert not (Path(workdir) / "note.txt").exists()  # written to the worker's private tmpfs
    assert not (outside / "pwned").exists()


def test_seccomp_program_shape():
    sys.path.append(_WORKER_DIR)
    import _hardening

    code = _hardening._seccomp_filter()
    if code is None:
        pytest.skip("seccomp filter is built for x86_64 only")
    assert len(code) % 8 == 0
    n = len(code) // 8
    assert n == 5 + len(set(_hardening._DENY_X86_64.values())) + 2
    assert "setrlimit" not in _hardening._DENY_X86_64  # the worker moves its CPU limit per cell
