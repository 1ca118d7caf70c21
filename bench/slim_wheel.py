"""Copy of the bitsandbytes wheel with only the native libraries one machine needs, so that it fits beside other
carried files in one device call (the device tool carries 64 MiB per call; the full wheel is 43 MB, mostly the
libraries of CUDA and ROCm versions the lent machines do not have).

    python bench/slim_wheel.py .whl-bnb/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl .whl-bnb-slim/
    python bench/slim_wheel.py WHEEL OUT_DIR --keep cuda130 --keep cuda132 --keep cpu      # the default

The wheel's RECORD loses the dropped files' lines; everything else is copied byte for byte. An existing file of the
same name in OUT_DIR is refused, never replaced.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

LIBRARY_PREFIX = "bitsandbytes/libbitsandbytes_"


def kept(name: str, keep: list[str]) -> bool:
    """Whether a file of the wheel stays: anything but a native library not named in `keep`."""
    return not name.startswith(LIBRARY_PREFIX) or any(tag in name for tag in keep)


def slim(wheel: Path, out_dir: Path, keep: list[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.exists() or target.resolve() == wheel.resolve():
        raise SystemExit(f"error: {target} exists; remove it or pick another OUT_DIR (nothing was written)")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as slimmed:
        for info in source.infolist():
            if not kept(info.filename, keep):
                continue
            data = source.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(line + "\n" for line in lines if kept(line.split(",")[0], keep)).encode()
            slimmed.writestr(info, data)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--keep", action="append", help="A library tag to keep (default: cuda130, cuda132, cpu).")
    args = parser.parse_args()
    target = slim(args.wheel, args.out_dir, args.keep or ["cuda130", "cuda132", "cpu"])
    print(f"{target}: {target.stat().st_size / 1e6:.1f} MB (from {args.wheel.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
