"""The container topology of docker-compose.yml: checked on paper, then run for real with
network namespaces standing in for the containers.

- `docker-compose config` accepts the file, and every program its services and healthchecks
  run is one the Dockerfile's image has (its pip install, its apt line, the base image), with
  options the program accepts;
- the healthcheck's `vhostnet status --socket-path ...` exits 0 while a backend serves and
  fails when none does;
- three namespaces we create (and always delete): A runs `vhostnet bridge`, B runs QEMU
  with the bundled guest (the vhost-user socket shared through the filesystem, like the
  compose volume), C holds the TAP and an HTTP server; the guest fetches a blob from C and
  checks its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from apps.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="the docker-compose binary is not installed (apt-get install "
                            "docker-compose); the compose file was not validated")
# what the debian base image has without any apt-get install
BASE_IMAGE_PROGRAMS = {"sh", "test", "exec", "cat", "ls", "env"}


def compose_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    assert COMPOSE is not None
    return subprocess.run([COMPOSE, "-f", str(COMPOSE_FILE), "config", *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, **(env or {})})


def load_yaml(text: str) -> dict:
    """PyYAML when the venv has it, else the docker-compose binary's own Python (compose
    itself is written against PyYAML, so that interpreter always has it)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        assert COMPOSE is not None
        with open(COMPOSE) as f:
            shebang = f.readline()
        interp = shlex.split(shebang[2:])
        out = subprocess.run([*interp, "-c", "import json, sys, yaml; "
                              "json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
                             input=text, capture_output=True, text=True, timeout=30, check=True)
        return json.loads(out.stdout)
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def config() -> dict:
    if COMPOSE is None:
        pytest.skip("the docker-compose binary is not installed (apt-get install docker-compose)")
    # config re-escapes the sh -c scripts' $ as $$ on output; argv_of() undoes that
    out = compose_config()
    assert out.returncode == 0, out.stderr
    return load_yaml(out.stdout)


def dockerfile() -> tuple[set[str], list[str], str]:
    """(apt packages installed, COPY sources, the whole text with continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    apt: set[str] = set()
    copies: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("RUN") and "apt-get install" in line:
            words = line.split("apt-get install", 1)[1].split("&&")[0].split()
            apt |= {w for w in words if not w.startswith("-")}
        elif line.startswith("COPY"):
            copies += line.split()[1:-1]
    return apt, copies, text


def argv_of(command: list[str], env: dict[str, str]) -> list[str]:
    """The argv a service's command ends up exec'ing. `sh -c SCRIPT` runs the script with
    its `exec` turned into printing its arguments, under `env`."""
    if command[:2] != ["sh", "-c"]:
        return command
    script = command[2].replace("$$", "$")
    assert script.startswith("exec "), script
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + script[len("exec "):]],
                         capture_output=True, text=True, timeout=10, env=env, check=True)
    return out.stdout.split("\0")[:-1]


def service_argvs(config: dict) -> list[tuple[str, list[str]]]:
    """(where, argv) for every command and healthcheck, pcap on and off for sh -c ones."""
    found = []
    for name, svc in config["services"].items():
        cmd = svc.get("command")
        if cmd:
            envs = [{}, {"VHOSTNET_PCAP": "s.pcap", "VHOSTNET_PCAP_ROTATE": "100M"}]
            for env in envs if cmd[:2] == ["sh", "-c"] else envs[:1]:
                found.append((f"{name} command {env}", argv_of(cmd, env)))
        test = (svc.get("healthcheck") or {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthcheck should be exec form: {test}"
            found.append((f"{name} healthcheck", test[1:]))
    return found


@needs_compose
def test_compose_config_validates():
    for env in ({}, {"VHOSTNET_PCAP": "s.pcap", "VHOSTNET_CAPTURE_DIR": "/tmp"}):
        out = compose_config("-q", env=env)
        assert out.returncode == 0, out.stderr
    out = compose_config("--services")
    assert set(out.stdout.split()) >= {"vhostnet", "vm"}


def test_dockerfile_copies_exist_and_build_the_guest():
    apt, copies, text = dockerfile()
    for src in copies:
        assert (REPO / src).exists(), f"Dockerfile COPY {src}: not in the repo"
    # every package pip installs (pyproject's packages.find) is in the image's sources
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[([^\]]*)\]",
                        (REPO / "pyproject.toml").read_text())
    assert include
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    missing = packages - {c.rstrip("/") for c in copies}
    assert not missing, f"the Dockerfile does not COPY {sorted(missing)}"
    # ci/guest/build.py runs in the image: the script, busybox-static and cpio, the C compiler
    m = re.search(r"python\S* (ci/guest/build\.py)", text)
    assert m and (REPO / m.group(1)).is_file()
    assert {"busybox-static", "cpio", "qemu-system-x86", "python3-venv", "gcc"} <= apt
    assert "pip install" in text and "/opt/venv/bin" in text
    assert re.search(r"ENV PATH=/opt/venv/bin", text)


def test_every_program_the_services_run_is_in_the_image(config):
    apt, _, text = dockerfile()
    scripts = _pyproject_scripts()
    for where, argv in service_argvs(config):
        prog = argv[0]
        if prog in scripts:  # a console script of the pip-installed project, on PATH
            assert "pip install --no-cache-dir ." in text, where
            if prog == "vhostnet":
                parsed = build_parser().parse_args(argv[1:])  # exits 2 on a bad option
                assert callable(parsed.func), where
        elif prog == "python":  # the venv's python: python3-venv + venv on PATH
            assert "python3-venv" in apt and "python3 -m venv /opt/venv" in text, where
            assert argv[1] == "-m", where
            module = argv[2]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), where
            assert module.split(".")[0] + "*" in (REPO / "pyproject.toml").read_text()
            _check_module_options(module, argv[3:], where)
        else:
            assert prog in BASE_IMAGE_PROGRAMS, f"{where}: {prog} is not in the image"
    # the vm services boot QEMU: the image's apt line has it
    from apps.harness.vm import QemuVM

    assert QemuVM().qemu == "qemu-system-x86_64" and "qemu-system-x86" in apt


def _pyproject_scripts() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return {line.split("=")[0].strip() for line in section.splitlines() if "=" in line}


def _check_module_options(module: str, args: list[str], where: str) -> None:
    helptext = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                              text=True, timeout=30, cwd=REPO, check=True).stdout
    for a in args:
        if a.startswith("--"):
            assert re.search(rf"(^|\s|\[){re.escape(a)}\b", helptext), f"{where}: {a}"


def test_topology_paths_and_devices(config):
    services = config["services"]
    assert {"vhostnet", "vm"} <= set(services)
    sock = "/run/vhostnet/vhostnet.sock"
    for name in ("vhostnet", "vm"):
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}"
                  for v in services[name]["volumes"]]
        assert any(m.split(":")[1] == "/run/vhostnet" for m in mounts), (name, mounts)
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v["source"]
            if not src.startswith(("/", ".", "$")):
                assert src in config["volumes"], f"{name}: volume {src} not declared"
    backend = " ".join(argv_of(services["vhostnet"]["command"], {}))
    assert f"serve --socket-path {sock}" in backend
    health = services["vhostnet"]["healthcheck"]["test"]
    assert health[1:] == ["vhostnet", "status", "--socket-path", sock]
    assert services["vm"]["depends_on"]["vhostnet"]["condition"] == "service_healthy"
    assert f"--socket {sock}" in " ".join(services["vm"]["command"])
    kvm = [s for s in services.values() if "/dev/kvm:/dev/kvm" in s.get("devices", [])]
    assert kvm and all("kvm" in s["command"] and "kvm" in s.get("profiles", []) for s in kvm)
    # the capture volume: --pcap under /capture, only when VHOSTNET_PCAP is set
    on = argv_of(services["vhostnet"]["command"], {"VHOSTNET_PCAP": "x.pcap",
                                                  "VHOSTNET_PCAP_ROTATE": "10M"})
    assert on[-4:] == ["--pcap", "/capture/x.pcap", "--pcap-rotate", "10M"]
    assert "--pcap" not in argv_of(services["vhostnet"]["command"], {})


def test_healthcheck_exits_0_only_while_the_backend_serves(tmp_path):
    sock = tmp_path / "vhostnet.sock"
    status = [sys.executable, "-m", "apps.cli", "status", "--socket-path", str(sock)]
    assert subprocess.run(status, capture_output=True, timeout=30, cwd=REPO).returncode != 0
    backend = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--socket-path",
                                str(sock)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(status, capture_output=True, text=True, timeout=30, cwd=REPO)
            if r.returncode == 0:
                break
            assert backend.poll() is None and time.monotonic() < deadline, r.stderr
            time.sleep(0.1)
        assert "waiting for QEMU" in r.stdout
    finally:
        backend.send_signal(signal.SIGTERM)
        assert backend.wait(10) == 0
    assert subprocess.run(status, capture_output=True, timeout=30, cwd=REPO).returncode != 0


# -- the same topology with network namespaces as the containers ---------------------------

NS_IP = "10.78.0.1"
GUEST_IP = "10.78.0.2"
GUEST_MAC = "52:54:00:12:34:57"
BLOB = random.Random(11).randbytes(2 << 20)

HTTP_SERVER = """
import http.server, sys
blob = open(sys.argv[3], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""


def _ns_of(pid: int) -> str:
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                          text=True, timeout=10).stdout.strip()


@pytest.fixture
def namespaces():
    tag = uuid.uuid4().hex[:6]
    names = [f"vhn-ct{r}-{tag}" for r in "abc"]
    made = []
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True, timeout=10)
            made.append(n)
        yield names
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False, timeout=10)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(n in left for n in names), left


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns, TAP)")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="/dev/net/tun is missing")
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
@pytest.mark.qemu
@pytest.mark.netns
def test_backend_vm_and_server_in_three_namespaces(namespaces, tmp_path):
    from apps.harness.vm import GuestImage, QemuVM, vhost_user_nic_args

    ns_a, ns_b, ns_c = namespaces
    shared = tmp_path / "run-vhostnet"  # the compose file's vhostnet-sock volume
    shared.mkdir()
    sock = shared / "vhostnet.sock"
    tap = "vhnct" + uuid.uuid4().hex[:8]
    (tmp_path / "blob").write_bytes(BLOB)
    qemu = tmp_path / "qemu-in-b"
    qemu.write_text(f'#!/bin/sh\nexec ip netns exec {ns_b} qemu-system-x86_64 "$@"\n')
    qemu.chmod(0o755)
    procs: list[subprocess.Popen] = []
    err = open(tmp_path / "bridge.err", "w")
    try:
        bridge = subprocess.Popen(
            ["ip", "netns", "exec", ns_a, sys.executable, "-m", "apps.cli", "bridge",
             "--tap", tap, "--netns", ns_c, "--address", f"{NS_IP}/24",
             "--socket-path", str(sock)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        procs.append(bridge)
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert bridge.poll() is None, (tmp_path / "bridge.err").read_text()
            assert time.monotonic() < deadline, "the bridge's socket did not appear"
            time.sleep(0.05)
        assert _ns_of(bridge.pid) == ns_a
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns_c, sys.executable, "-c", HTTP_SERVER, NS_IP, "8080",
             str(tmp_path / "blob")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready", server.stderr.read()

        with QemuVM(GuestImage.default(), qemu=str(qemu),
                    nic_args=vhost_user_nic_args(sock, mac=GUEST_MAC)) as vm:
            vm.wait_ready(timeout=60)
            assert _ns_of(vm.pid) == ns_b
            vm.run_ok(f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0")
            got = vm.run_ok(f"wget -q -O - http://{NS_IP}:8080/blob | sha256sum", timeout=60)
            assert got.split()[0] == hashlib.sha256(BLOB).hexdigest(), got
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(5) == 0
        assert not sock.exists()
        links = subprocess.run(["ip", "-n", ns_c, "-o", "link"], capture_output=True,
                               text=True).stdout
        assert tap not in links
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        err.close()
