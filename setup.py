"""Build script: the package metadata lives in pyproject.toml; this file only adds the
cffi C helpers (built at install time, so `pip install .` in a fresh venv compiles them)."""

from setuptools import setup

setup(
    cffi_modules=[
        "netstack/_fast_build.py:ffibuilder",
        "vhostuser/_fast_build.py:ffibuilder",
    ],
)
