"""Two Linux network namespaces joined by a veth pair: two "hosts" on one machine (needs root, `ip`).

Used by test/test_two_hosts.py and bench/two_hosts.py. No pytest, no ROS here (but the argv of a
Fast DDS Discovery Server from the ros-fastrtps wheel: :func:`discovery_server_command`).

    with NetnsPair("agsg2h") as pair:          # namespaces agsg2h<pid>a, agsg2h<pid>b
        argv = pair.a.wrap(["demo_camera"])    # ["ip", "netns", "exec", "agsg2h<pid>a", "demo_camera"]
        pair.b.address                         # "192.0.2.2"

Each namespace has only `lo` (up) and its end of the veth (IPv4 only), with an address from 192.0.2.0/24
(TEST-NET-1, RFC 5737: reserved for documentation, routed nowhere): 192.0.2.1/24 in `a`,
192.0.2.2/24 in `b`. No default route, nothing else: a process inside can reach its own loopback
and the other namespace, nothing more. The veth is created directly inside the two namespaces, so
no interface ever appears in the machine's own namespace.

Names carry the creating process's pid (colleagues may run the same test at the same time); at
start, namespaces with the same prefix whose pid is no longer alive (left by a crashed run) are
deleted. Leaving the ``with`` block (or ``close()``) deletes both namespaces, which also deletes
the veth; stop the processes started inside first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET_PREFIX = "192.0.2."   # TEST-NET-1
PREFIX_LEN = 24
DISCOVERY_SERVER_PORT = 11811   # Fast DDS's default Discovery Server port


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, no kernel support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can (the checks cost nothing)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed: apt-get install iproute2"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (ip netns add); run the tests as root"
    return None


def remove_stale(prefix: str) -> list[str]:
    """Delete namespaces ``<prefix><pid>{a,b}`` whose pid is not alive; returns their names."""
    listing = _ip("netns", "list", check=False).stdout
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)[ab]$")
    removed = []
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = pattern.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():   # its creator is gone
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Namespace:
    name: str
    address: str        # its 192.0.2.x address on the veth
    device: str         # its veth end

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (`ip netns exec` execs it: same pid, signals reach it)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(list(argv)), capture_output=True, text=True, timeout=30, check=check)

    def device_counters(self, device: str | None = None) -> dict[str, int]:
        """rx/tx bytes and packets of ``device`` (default: the veth end), from sysfs in the namespace."""
        dev = device or self.device
        keys = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        out = self.run("cat", *(f"/sys/class/net/{dev}/statistics/{k}" for k in keys)).stdout.split()
        return dict(zip(keys, map(int, out), strict=True))


    def _proc_counters(self, path: str, tag: str) -> dict[str, int]:
        lines = [ln.split() for ln in self.run("cat", path).stdout.splitlines() if ln.startswith(tag)]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))

    def udp_counters(self) -> dict[str, int]:
        """The namespace's UDP counters (/proc/net/snmp ``Udp:``), e.g. RcvbufErrors: datagrams
        dropped because a socket's receive buffer was full."""
        return self._proc_counters("/proc/net/snmp", "Udp:")

    def multicast_received(self) -> int:
        """IP multicast packets this namespace has received (/proc/net/netstat ``IpExt: InMcastPkts``;
        the veth's own sysfs ``multicast`` counter stays 0)."""
        return self._proc_counters("/proc/net/netstat", "IpExt:")["InMcastPkts"]


class NetnsPair:
    """Namespaces ``a`` (192.0.2.1) and ``b`` (192.0.2.2) joined by a veth pair; see the module doc."""

    def __init__(self, prefix: str, mtu: int | None = None):
        if not re.fullmatch(r"[a-z][a-z0-9]{1,15}", prefix):
            raise ValueError(f"namespace prefix {prefix!r}: 2-16 lower-case letters/digits")
        self.prefix = prefix
        pid = os.getpid()
        self.a = Namespace(f"{prefix}{pid}a", SUBNET_PREFIX + "1", "veth2h0")
        self.b = Namespace(f"{prefix}{pid}b", SUBNET_PREFIX + "2", "veth2h1")
        self.mtu = mtu
        self._made: list[str] = []

    def open(self) -> NetnsPair:
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        remove_stale(self.prefix)
        try:
            for ns in (self.a, self.b):
                if ns.name in _ip("netns", "list", check=False).stdout.split():
                    _ip("netns", "delete", ns.name, check=False)   # ours (same pid) from an earlier open
                _ip("netns", "add", ns.name)
                self._made.append(ns.name)
            _ip("link", "add", self.a.device, "netns", self.a.name, "type", "veth",
                "peer", "name", self.b.device, "netns", self.b.name)
            for ns in (self.a, self.b):
                ns.run("ip", "link", "set", "lo", "up")
                # IPv4 only: no IPv6 link-local address, router solicitations or MLD reports
                knob = f"/proc/sys/net/ipv6/conf/{ns.device}/disable_ipv6"
                ns.run("sh", "-c", f"if [ -e {knob} ]; then echo 1 > {knob}; fi")
                ns.run("ip", "addr", "add", f"{ns.address}/{PREFIX_LEN}", "dev", ns.device)
                if self.mtu:
                    ns.run("ip", "link", "set", ns.device, "mtu", str(self.mtu))
                ns.run("ip", "link", "set", ns.device, "up")
            self._wait_carrier()
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetnsUnavailable(f"{' '.join(exc.cmd)} failed: {exc.stderr.strip()}") from exc
        except BaseException:
            self.close()
            raise
        return self

    def _wait_carrier(self, timeout: float = 10.0) -> None:
        # A veth end reports carrier a moment after `ip link set up`. Fast DDS lists the interfaces
        # once, when a participant is created: one started before that announces no 192.0.2.x
        # locator and is never reached from the other namespace.
        deadline = time.monotonic() + timeout
        while True:
            states = [ns.run("cat", f"/sys/class/net/{ns.device}/operstate").stdout.strip()
                      for ns in (self.a, self.b)]
            if states == ["up", "up"]:
                return
            if time.monotonic() > deadline:
                raise NetnsUnavailable(f"veth {self.a.device}/{self.b.device} not up after {timeout} s: {states}")
            time.sleep(0.05)

    def close(self) -> None:
        while self._made:
            _ip("netns", "delete", self._made.pop(), check=False)

    def exists(self) -> list[str]:
        """Which of this pair's namespaces exist now (empty after close)."""
        listed = {line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.split()}
        return [ns.name for ns in (self.a, self.b) if ns.name in listed]

    def __enter__(self) -> NetnsPair:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def discovery_server_command(address: str, port: int = DISCOVERY_SERVER_PORT):
    """(argv, env) of a Fast DDS Discovery Server (server id 0) from the ros-fastrtps wheel, or
    (None, why) when this environment has none.

    The wheel installs ``<venv>/bin/fast-discovery-server`` with an RPATH that points outside the
    venv ($ORIGIN/../../../ros_fastrtps.libs), so on its own it finds neither libfastrtps.so.2.14
    (<venv>/lib) nor the tinyxml2/OpenSSL copies bundled in <site-packages>/ros_fastrtps.libs:
    LD_LIBRARY_PATH supplies both.
    """
    exe = Path(sys.prefix) / "bin" / "fast-discovery-server"
    if not exe.exists():
        return None, f"no {exe} (the ros-fastrtps wheel ships it as bin/fast-discovery-server)"
    libs = [str(Path(sys.prefix) / "lib"), str(Path(sysconfig.get_paths()["purelib"]) / "ros_fastrtps.libs")]
    if os.environ.get("LD_LIBRARY_PATH"):
        libs.append(os.environ["LD_LIBRARY_PATH"])
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(libs))
    return [str(exe), "-i", "0", "-l", address, "-p", str(port)], env
