# One image for both compose services: the backend (`vhostnet serve`) and a QEMU VM with the
# bundled guest (`python -m apps.harness.vm`). See docker-compose.yml.
FROM debian:bookworm
# python3 (3.11) + venv + a C toolchain and libpcap-dev for the cffi helpers; qemu-system-x86
# for the vm service; busybox-static, cpio for ci/guest/build.py (it apt-get downloads the
# cloud kernel).
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev libffi-dev libpcap-dev make \
        qemu-system-x86 busybox-static cpio \
        iproute2 kmod ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# Only the sources: not the checkout's .venv, .git, caches or host-built *.so.
WORKDIR /opt/vhostnet/src
COPY pyproject.toml setup.py README.md ./
COPY apps apps
COPY netstack netstack
COPY vhostuser vhostuser
COPY gateway gateway
COPY csrc csrc
COPY ci ci
# The guest image lives here at build time and at run time (apps.harness.vm looks in the same place).
ENV VHOSTNET_CACHE=/opt/vhostnet/cache
RUN find . -name '*.so' -delete \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python ci/guest/build.py --quiet \
    && rm -rf /var/lib/apt/lists/* build
ENV PATH=/opt/venv/bin:$PATH
# Run outside the source tree, so `python -m apps.harness.vm` imports the installed package.
WORKDIR /opt/vhostnet
CMD ["vhostnet", "serve", "--socket-path", "/run/vhostnet/vhostnet.sock"]
