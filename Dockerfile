# One image for both compose services: the backend and a QEMU VM with the bundled guest.
FROM debian:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc make qemu-system-x86 busybox-static cpio \
        iproute2 kmod ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vhostnet
COPY . .
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python ci/guest/build.py --quiet
ENV PATH=/opt/venv/bin:$PATH
CMD ["vhostnet", "serve", "--socket-path", "/run/vhostnet/vhostnet.sock"]
