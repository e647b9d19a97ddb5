"""What the benchmarks share: tools, the back-end, proxies as processes, and measuring
them through /proc. Imported by bench/compare, bench/scale, bench/overload and bench/cache."""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXY_CORE = "0"
LOAD_CORE = "1"
TICKS = os.sysconf("SC_CLK_TCK")
TOOLS = {"wrk": "wrk", "nginx": "nginx", "haproxy": "haproxy", "h2load": "nghttp2-client",
         "openssl": "openssl"}
BODY_100 = "x" * 100


def log(message):
    print(message, file=sys.stderr, flush=True)


def install(packages, needed_by, recommends=True):
    """Installs Debian packages when run as root; anyone else is told what to install."""
    if os.geteuid() != 0:
        sys.exit(f"{needed_by} needs: apt-get install {' '.join(packages)}")
    log(f"installing {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Wait for another install to finish instead of failing on the package manager's lock.
    lock = ["-o", "DPkg::Lock::Timeout=120"]
    options = [] if recommends else ["--no-install-recommends"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *options, *packages], check=True,
                   env=env)


def ensure_tools():
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        install(missing, "bench/compare")


def build_baton():
    log("building baton (release)")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return ROOT / "target" / "release" / "baton"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def process_tree(pid):
    """The pid and its descendants (nginx's workers)."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for c in child.read_text().split():
                found.extend(process_tree(int(c)))
        except OSError:
            pass
    return found


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def core_times():
    """(busy, total) jiffies of each core."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            values = [int(v) for v in values]
            idle = values[3] + values[4]
            times[name[3:]] = (sum(values) - idle, sum(values))
    return times


def busy_share(before, after, core):
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total else 0.0


class Backend:
    """nginx on the load core: `return 200` of 100 bytes for any path, a 64 KiB file at
    /64k, and stub_status for its accept counter."""

    def __init__(self, work, listen_all=False, cache_control=None):
        self.port = free_port()
        # With `cache_control`, every answer says so (for the cache benchmark).
        headers = f'add_header Cache-Control "{cache_control}";' if cache_control else ""
        # On every address, 127.0.0.0/8 included, for upstreams of many endpoints.
        listen = f"{self.port}" if listen_all else f"127.0.0.1:{self.port}"
        root = work / "www"
        root.mkdir()
        (root / "64k").write_bytes(b"x" * 65536)
        # nginx's workers run as another user; the scratch directory is private.
        for path in (work, root, root / "64k"):
            path.chmod(0o755)
        conf = work / "backend.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
error_log {work}/backend-error.log;
pid {work}/backend.pid;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen {listen} backlog=4096;
        {headers}
        location / {{ return 200 "{BODY_100}"; }}
        location = /no-store {{ add_header Cache-Control "no-store"; return 200 "{BODY_100}"; }}
        location = /64k {{ root {root}; }}
        location = /stub {{ stub_status; }}
    }}
}}
""")
        self.process = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, "nginx", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def accepts(self):
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"GET /stub HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        # "Active connections: N \nserver accepts handled requests\n A H R \n..."
        lines = data.split(b"\r\n\r\n", 1)[1].decode().splitlines()
        return int(lines[2].split()[0])

    def stop(self):
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(timeout=10)


@dataclass
class Proxy:
    name: str
    h1_port: int
    h2_port: int
    command: list
    env: dict = field(default_factory=dict)
    process: subprocess.Popen = None
    # HTTPS (HTTP/1.1 and HTTP/2 by ALPN), when the proxy was given a certificate.
    tls_port: int = None

    def start(self):
        self.process = subprocess.Popen(
            ["taskset", "-c", PROXY_CORE, *self.command],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, **self.env))
        for port in {self.h1_port, self.h2_port, self.tls_port} - {None}:
            wait_for_port(port, self.process)

    def pids(self):
        return process_tree(self.process.pid)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spread(values):
    """Median, min and max of the values that are known."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt(value, digits=1):
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value / 1000:.{digits}f}k"
    return f"{value:.{digits}f}"


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def run_wrk(port, path, connections, seconds, scheme="http", script=None):
    """wrk against `path` (or the requests of the Lua `script`): requests, errors, p50, p99."""
    lua = ["-s", str(script)] if script else []
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "--latency", *lua, f"{scheme}://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    result = {"requests": 0, "errors": 0, "p50": None, "p99": None}
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def millis(text):
        for suffix in ("us", "ms", "s"):
            if text.endswith(suffix):
                return float(text[: -len(suffix)]) * unit[suffix]
        return float(text)

    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "50%":
            result["p50"] = millis(words[1])
        elif len(words) >= 2 and words[0] == "99%":
            result["p99"] = millis(words[1])
        elif "requests in" in line:
            result["requests"] = int(words[0])
        elif line.strip().startswith("Non-2xx"):
            result["errors"] += int(words[-1])
        elif line.strip().startswith("Socket errors"):
            result["errors"] += sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
    return result


def run_h2load(port, path, connections, streams, seconds, work, scheme="http"):
    log_file = work / "h2load.log"
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "h2load", "-t1", f"-c{connections}", f"-m{streams}",
         f"-D{seconds}", "--log-file", str(log_file), f"{scheme}://127.0.0.1:{port}{path}"],
        capture_output=True, text=True).stdout
    latencies = []
    errors = 0
    for line in log_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            if parts[1] != "200":
                errors += 1
            latencies.append(int(parts[2]) / 1e3)
    latencies.sort()
    for line in out.splitlines():
        if line.startswith("requests:") and "failed" in line:
            words = line.replace(",", "").split()
            errors = max(errors, int(words[words.index("failed") - 1]))
    log_file.unlink(missing_ok=True)
    return {"requests": len(latencies), "errors": errors,
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}




def make_certificate(work):
    """A self-signed P-256 certificate for 127.0.0.1, the same for every proxy: returns
    (cert, key, both in one file for HAProxy)."""
    cert, key, both = work / "bench.pem", work / "bench.key", work / "bench-both.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    both.write_text(cert.read_text() + key.read_text())
    return cert, key, both


def run_handshakes(port, seconds, reuse, clients=4):
    """New TLS connections to `port` for `seconds`, from `clients` openssl s_time
    processes on the load core: full TLS 1.3 handshakes, or with `reuse` resumed TLS 1.2
    ones (s_time cannot resume TLS 1.3: it never reads the session ticket that follows
    the handshake). No request is sent. Returns the handshakes made."""
    mode = ["-reuse", "-tls1_2"] if reuse else ["-new"]
    runs = [subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
         *mode, "-time", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(clients)]
    total = 0
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 30)
        for line in out.splitlines():
            # "12345 connections in 5.01s; 2463.07 connections/user sec, ..."
            words = line.split()
            if len(words) > 2 and words[1] == "connections" and words[2] == "in":
                total += int(words[0])
                break
    return total


def baton_config(work, name, backend_endpoints, pool, access="off", routes=None, tls=None,
                 extra=("", "", "")):
    """A baton config file: one listener (and a second one, HTTPS, with `tls` = (cert,
    key)), the routes given as path prefixes (default one catch-all), all to one upstream
    of `backend_endpoints`; `extra` = lines for each route, the upstream and the file's
    end. Returns (path, port, tls port)."""
    route_extra, upstream_extra, file_extra = extra
    port = free_port()
    tls_port = free_port() if tls else None
    tls_listener = "" if not tls else f"""
[[listeners]]
name = "bench-tls"
listen = "127.0.0.1:{tls_port}"
tls = {{ cert = "{tls[0]}", key = "{tls[1]}" }}
"""
    route_text = "".join(
        f'[[routes]]\nname = "r{i}"\npath_prefix = "{prefix}"\nupstream = "backend"\n{route_extra}\n'
        for i, prefix in enumerate(routes or ["/"]))
    endpoints = ", ".join(f'"{e}"' for e in backend_endpoints)
    conf = work / f"{name}.toml"
    conf.write_text(f"""
[admin]
listen = "127.0.0.1:{free_port()}"
[log]
access = "{access}"
level = "warn"
[[listeners]]
name = "bench"
listen = "127.0.0.1:{port}"
{tls_listener}
{route_text}
[upstreams.backend]
endpoints = [{endpoints}]
keepalive = {{ idle = "60s", max_idle_per_endpoint = {pool} }}
{upstream_extra}
{file_extra}
""")
    return conf, port, tls_port


def baton_proxy(baton, work, name, backend_endpoints, pool, access="off", routes=None, tls=None,
                extra=("", "", "")):
    conf, port, tls_port = baton_config(work, name, backend_endpoints, pool, access, routes, tls,
                                        extra)
    return Proxy(name, port, port, [str(baton), "run", "-c", str(conf)], tls_port=tls_port)


def nginx_proxy(work, backend_port, pool, servers=None, name="nginx", tls=None):
    """nginx as the proxy, in front of the back-end (or of `servers`, "host:port" each);
    with `tls` = (cert, key), HTTPS on a third port (HTTP/2 and HTTP/1.1 by ALPN, session
    tickets and a session cache, TLS 1.2 and 1.3)."""
    port, h2 = free_port(), free_port()
    tls_port = free_port() if tls else None
    tls_server = "" if not tls else f"""
        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;"""
    conf = work / f"{name}.conf"
    upstream_servers = " ".join(
        f"server {server};" for server in (servers or [f"127.0.0.1:{backend_port}"]))
    conf.write_text(f"""
worker_processes 1;
daemon off;
error_log {work}/nginx-error.log;
pid {work}/{name}.pid;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    upstream backend {{ {upstream_servers} keepalive {pool}; keepalive_requests 100000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{h2} http2 backlog=4096;{tls_server}
        location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                     proxy_set_header Connection ""; proxy_buffering on; }}
    }}
}}
""")
    return Proxy(name, port, h2, ["nginx", "-c", str(conf)], tls_port=tls_port)


def haproxy_proxy(work, backend_port, pool, tls=None):
    """HAProxy as the proxy; with `tls` = (cert, key, both in one file), HTTPS on a third
    port (ALPN h2 and http/1.1; its session cache and tickets are on by default)."""
    port, h2 = free_port(), free_port()
    tls_port = free_port() if tls else None
    tls_bind = "" if not tls else (
        f"\n    bind 127.0.0.1:{tls_port} ssl crt {tls[2]} alpn h2,http/1.1 "
        "ssl-min-ver TLSv1.2 backlog 4096")
    conf = work / "haproxy.cfg"
    conf.write_text(f"""
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:{port} backlog 4096
    bind 127.0.0.1:{h2} proto h2 backlog 4096{tls_bind}
    default_backend backend
backend backend
    server s1 127.0.0.1:{backend_port} pool-max-conn {pool}
""")
    return Proxy("haproxy", port, h2, ["haproxy", "-db", "-f", str(conf)], tls_port=tls_port)


def raise_file_limit():
    """Every process started from here may open as many files as the system allows."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
