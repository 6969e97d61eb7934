#!/usr/bin/env bash
# Installs everything vhostnet's demo and tests need, idempotently and quickly when done:
# Debian packages (QEMU, busybox, cpio, tshark, iproute2, DPDK's testpmd, the TFTP clients
# tftp-hpa and atftp, libpcap-dev for the capture filters' binding, tcpdump to test them
# against), the Python package with its test extras in .venv (compiling the cffi
# helpers), and the guest kernel + initramfs (cached outside git by ci/guest/build.py).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-x86 busybox-static cpio tshark iproute2 kmod iperf3 curl docker-compose passt
              dpdk-dev debootstrap bubblewrap tftp-hpa atftp atftpd nftables libpcap-dev tcpdump)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install: apt packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "install: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.vhostnet-install-stamp
want=$(cat pyproject.toml setup.py netstack/_fast_build.py vhostuser/_fast_build.py \
       apps/capture/_bpf_build.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
        || ! .venv/bin/python -c "import netstack._fast, vhostuser._fast, apps.capture._bpf" 2>/dev/null; then
    echo "install: pip install -e .[test] (builds the cffi helpers)"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import netstack._fast, vhostuser._fast, apps.capture._bpf"
    echo "$want" > "$stamp"
fi

.venv/bin/python ci/guest/build.py --quiet

# QEMU 10 beside the system's 7.2 (tests run multiqueue on both): Debian 13's, in a root
# made once with debootstrap (~40 s, ~360 MB) and run through bwrap (apps.harness.vm.qemu10)
CACHE=${VHOSTNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhostnet}
if [ ! -x "$CACHE/trixie/usr/bin/qemu-system-x86_64" ]; then
    echo "install: QEMU 10 (debootstrap trixie into $CACHE/trixie)"
    rm -rf "$CACHE/trixie.tmp"
    mkdir -p "$CACHE"
    if debootstrap --variant=minbase --include=qemu-system-x86,ipxe-qemu,passt trixie \
            "$CACHE/trixie.tmp" http://deb.debian.org/debian >/dev/null 2>&1; then
        mv "$CACHE/trixie.tmp" "$CACHE/trixie"
    else
        echo "install: debootstrap of trixie failed; the QEMU 10 tests will be skipped" >&2
        rm -rf "$CACHE/trixie.tmp"
    fi
fi
# passt's vhost-user mode (bench vm's passt-vu), added to a root made before it was asked for
if [ -x "$CACHE/trixie/usr/bin/qemu-system-x86_64" ] && [ ! -x "$CACHE/trixie/usr/bin/passt" ]; then
    echo "install: passt into $CACHE/trixie"
    bwrap --bind "$CACHE/trixie" / --proc /proc --dev-bind /dev /dev \
        --ro-bind /etc/resolv.conf /etc/resolv.conf \
        apt-get -o APT::Sandbox::User=root install -y -q passt >/dev/null 2>&1 \
        || echo "install: passt in the trixie root failed; bench vm skips passt-vu" >&2
fi
