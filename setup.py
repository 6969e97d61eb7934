"""Build script: the package metadata lives in pyproject.toml; this file only adds the
cffi C helpers (built at install time, so `pip install .` in a fresh venv compiles them;
the libpcap binding needs libpcap's headers: Debian's libpcap-dev)."""

from setuptools import setup

setup(
    cffi_modules=[
        "netstack/_fast_build.py:ffibuilder",
        "vhostuser/_fast_build.py:ffibuilder",
        "apps/capture/_bpf_build.py:ffibuilder",  # links libpcap (libpcap-dev)
    ],
)
