#!/usr/bin/env python3
"""Build an MCUboot-headed test image for flownexus' firmware updates.

    firmware/make-test-image.py --version 1.2.3+4 --size 524288 OUT.bin

The image has the layout MCUboot's imgtool writes (bootutil's image.h):
a 32-byte header padded to --header-size (0x200 as nRF Connect SDK's
signing uses), the body, and a protected-TLV-free trailer holding the
SHA-256 of header and body (IMAGE_TLV_SHA256, 0x10). It is NOT signed:
MCUboot on a device built with signature checking refuses it, so it is for
the simulator, the tests and lab devices built without signature checks.
flownexus reads the kind (ih_magic) and the version (ih_ver) from it.
The body is pseudo-random from --seed, so two images of one version and
seed are identical byte for byte. Standard library only.
"""
import argparse
import hashlib
import random
import re
import struct
import sys

IMAGE_MAGIC = 0x96F3B83D  # ih_magic
TLV_INFO_MAGIC = 0x6907  # IMAGE_TLV_INFO_MAGIC (unprotected TLVs)
IMAGE_TLV_SHA256 = 0x10


def version(text):
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:\+(\d+))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not MAJOR.MINOR.REVISION[+BUILD]: {text}")
    major, minor, revision, build = (int(x or 0) for x in m.groups())
    if major > 255 or minor > 255 or revision > 65535 or build > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"out of range for ih_ver: {text}")
    return major, minor, revision, build


def build(ver, size, header_size, seed):
    body = random.Random(seed).randbytes(size)
    major, minor, revision, build_num = ver
    header = struct.pack(
        "<IIHHIIBBHII",
        IMAGE_MAGIC,
        0,  # ih_load_addr
        header_size,  # ih_hdr_size
        0,  # ih_protect_tlv_size
        size,  # ih_img_size
        0,  # ih_flags
        major,
        minor,
        revision,
        build_num,
        0,  # _pad1
    )
    header = header.ljust(header_size, b"\0")
    digest = hashlib.sha256(header + body).digest()
    tlv = struct.pack("<HH", IMAGE_TLV_SHA256, len(digest)) + digest
    trailer = struct.pack("<HH", TLV_INFO_MAGIC, 4 + len(tlv)) + tlv
    return header + body + trailer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", type=version, required=True)
    p.add_argument("--size", type=int, default=512 * 1024, help="body bytes (default 512 KiB)")
    p.add_argument("--header-size", type=lambda x: int(x, 0), default=0x200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("out")
    a = p.parse_args()
    if a.header_size < 32 or a.size < 0:
        p.error("--header-size must be at least 32 and --size not negative")
    data = build(a.version, a.size, a.header_size, a.seed)
    with open(a.out, "wb") as f:
        f.write(data)
    print(f"{a.out}: {len(data)} bytes, version {'.'.join(map(str, a.version[:3]))}+{a.version[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
