#!/usr/bin/env python3
"""Operations tests with the real programs (run by ./scripts/test):

1. deploy/: the Kubernetes manifests parse and name the probes, ports and paths that the real
   binary serves (checked against a running `micdrop serve` started with the ConfigMap's config);
   the Dockerfile's port, health check and config file agree with them; the Grafana dashboard
   only queries metrics that exist.
2. A real Prometheus scrapes a real `micdrop serve --sim` after a call with a spoken turn and is
   queried for micdrop_turn_latency_seconds_count > 0; `promtool check metrics` accepts /metrics.
3. A real nginx (deploy/nginx/micdrop.conf, self-signed certificate) in front of two
   `micdrop serve --sim` instances: calls over wss://, SIGTERM to one instance mid-call: its
   /readyz turns 503, its call goes on and ends normally (then the process exits 0), a new call
   lands on the other instance, and the caller on the other instance sees no error.

Everything runs on free loopback ports in a temporary directory and is stopped at the end.
Usage: scripts/ops-e2e.py [manifests|prometheus|nginx ...]   (default: all)
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCS = []
FAILURES = []


def log(msg):
    print(f"[ops-e2e] {msg}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(
        ["cargo", "build", "-q", "-p", "micdrop-cli", "--bin", "micdrop"], cwd=ROOT, check=True
    )
    return os.path.join(target, "debug", "micdrop")


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class Serve:
    """A `micdrop serve --sim` process on a free port, its log collected."""

    def __init__(self, exe, tmp, name, config):
        self.port = free_port()
        path = os.path.join(tmp, f"{name}.toml")
        with open(path, "w") as f:
            f.write(config)
        self.log = []
        self.proc = subprocess.Popen(
            [exe, "serve", "--sim", "--listen", f"127.0.0.1:{self.port}", "--config", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        PROCS.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port)
        self.name = name

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def get(self, path):
        return http_get(self.port, path)

    def metric(self, series):
        return sample(self.get("/metrics")[1], series)

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit; log:\n{''.join(self.log)}")


def http_get(port, path):
    """GET over plain HTTP on loopback, redirects not followed: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def sample(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line[len(series) + 1 :])
    return None


class WsError(Exception):
    pass


class Ws:
    """A minimal RFC 6455 client (masked frames), over TCP or TLS."""

    def __init__(self, port, path="/call", cafile=None, host="localhost"):
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
            s = ctx.wrap_socket(s, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise WsError("connection closed during the handshake")
            buf += chunk
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split()[1])
        if self.status != 101:
            raise WsError(f"HTTP {self.status}")
        self.s = s

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(header + mask + masked)

    def text(self, t):
        self._send(0x1, t.encode())

    def binary(self, b):
        self._send(0x2, b)

    def close(self, code=1000):
        try:
            self._send(0x8, struct.pack("!H", code))
            self.s.close()
        except OSError:
            pass

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise WsError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=15):
        """('text', str) | ('binary', bytes) | ('close', (code, reason)) | None on timeout."""
        self.s.settimeout(timeout)
        try:
            b0, b1 = self._read(2)
        except (socket.timeout, TimeoutError):
            return None
        opcode, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        payload = self._read(n)
        if opcode == 0x1:
            return ("text", payload.decode())
        if opcode == 0x2:
            return ("binary", payload)
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            return ("close", (code, payload[2:].decode(errors="replace")))
        if opcode == 0x9:
            self._send(0xA, payload)
        return self.recv(timeout)

    def next_text(self, timeout=15):
        """The next text frame (audio skipped); fails on a close or a timeout."""
        while True:
            f = self.recv(timeout)
            check(f is not None, "no frame within the timeout")
            if f[0] == "text":
                return f[1]
            check(f[0] == "binary", f"unexpected frame {f}")

    def quiet(self, secs=0.5):
        """Reads audio until nothing comes for `secs`; fails on anything else."""
        while True:
            f = self.recv(secs)
            if f is None:
                return
            check(f[0] == "binary", f"unexpected frame {f}")


def tone(i):
    """100 ms of a 440 Hz tone, 16 kHz s16le (speech for the simulators' energy detector)."""
    import math

    return b"".join(
        struct.pack("<h", int(8000 * math.sin((i * 1600 + k) / 16000 * 440 * 2 * math.pi)))
        for k in range(1600)
    )


def spoken_turn(ws, transcript):
    ws.text("StartSpeaking")
    for i in range(10):
        ws.binary(tone(i))
    ws.text("StopSpeaking")
    check(
        ws.next_text() == 'Message {"role":"user","content":"%s"}' % transcript,
        "user transcript",
    )
    answer = ws.next_text()
    check(answer.startswith('Message {"role":"assistant"'), f"assistant answer: {answer}")
    ws.quiet()


SIM_CONFIG = """[call]
first_message = "Bonjour"
[sim]
zero_delay = true
transcripts = ["Quelle heure est-il ?", "Merci", "Au revoir"]
"""

GREETING = 'Message {"role":"assistant","content":"Bonjour"}'


def call(port, cafile=None):
    ws = Ws(port, cafile=cafile)
    check(ws.next_text() == GREETING, "greeting")
    ws.quiet()
    return ws


# --- 1. deploy/ -----------------------------------------------------------------------------


def test_manifests(exe, tmp):
    docs = {}
    kdir = os.path.join(ROOT, "deploy", "kubernetes")
    for name in sorted(os.listdir(kdir)):
        with open(os.path.join(kdir, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs[(doc["kind"], doc.get("metadata", {}).get("name"))] = doc
    kinds = {k for k, _ in docs}
    for k in [
        "Deployment", "Service", "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler",
        "ServiceMonitor", "Secret", "ConfigMap", "Kustomization",
    ]:
        check(k in kinds, f"deploy/kubernetes has a {k}")
    kust = docs[("Kustomization", None)]
    for r in kust["resources"]:
        check(os.path.exists(os.path.join(kdir, r)), f"kustomization resource {r} exists")

    toml_text = docs[("ConfigMap", "micdrop-config")]["data"]["micdrop.toml"]
    conf = tomllib.loads(toml_text)
    listen_port = int(conf["server"]["listen"].rsplit(":", 1)[1])
    drain = conf["server"]["drain_timeout_secs"]

    dep = docs[("Deployment", "micdrop")]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("http") == listen_port, "containerPort 'http' is the config's listen port")
    check(pod["terminationGracePeriodSeconds"] > drain, "grace period above the drain timeout")
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    check(live["port"] == "http" and ready["port"] == "http", "probes on the http port")
    check(c["resources"]["requests"] and c["resources"]["limits"], "resources")
    check(
        c["envFrom"][0]["secretRef"]["name"] in {n for k, n in docs if k == "Secret"},
        "the API keys come from the Secret",
    )
    mount = [m for m in c["volumeMounts"] if m["name"] == "config"][0]["mountPath"]
    check(
        c["args"][-1] == mount + "/micdrop.toml",
        "the container reads the ConfigMap's file",
    )
    svc = docs[("Service", "micdrop")]
    check(svc["spec"]["ports"][0]["targetPort"] == "http", "Service targets the http port")
    check(
        svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"],
        "Service selects the pods",
    )
    ing = docs[("Ingress", "micdrop")]
    ann = ing["metadata"]["annotations"]
    check(
        int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600,
        "ingress read timeout for long calls",
    )
    check(ing["spec"]["tls"], "ingress terminates TLS")
    sm = docs[("ServiceMonitor", "micdrop")]["spec"]["endpoints"][0]
    check(sm["port"] == "http", "ServiceMonitor port")
    hpa = docs[("HorizontalPodAutoscaler", "micdrop")]["spec"]
    check(
        any(m.get("pods", {}).get("metric", {}).get("name") == "micdrop_calls_active"
            for m in hpa["metrics"]),
        "HPA on micdrop_calls_active",
    )
    check(hpa["minReplicas"] >= 2, "at least two replicas")
    check(docs[("PodDisruptionBudget", "micdrop")]["spec"]["maxUnavailable"] == 1, "PDB")
    adapter = yaml.safe_load(docs[("ConfigMap", "micdrop-adapter-rules")]["data"]["config.yaml"])
    check("micdrop_calls_active" in adapter["rules"][0]["seriesQuery"], "adapter rule")

    # The Dockerfile agrees: port, health check path, non-root, the config it ships.
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        docker = f.read()
    check(re.search(r"^EXPOSE 8080$", docker, re.M) and listen_port == 8080, "EXPOSE 8080")
    hc = re.search(r"^HEALTHCHECK .*\n.*(http://127\.0\.0\.1:8080(/\S+))\"", docker, re.M)
    check(hc, "HEALTHCHECK on port 8080")
    check(re.search(r"^USER micdrop$", docker, re.M), "non-root user")
    check(re.search(r"^FROM .* AS build$", docker, re.M) and "--profile dist" in docker, "multi-stage")
    check("espeak-ng" in docker, "espeak-ng in the runtime image")
    with open(os.path.join(ROOT, "deploy", "micdrop.toml")) as f:
        image_conf = f.read()
    check(tomllib.loads(image_conf)["server"]["listen"] == "0.0.0.0:8080", "image config port")
    for line in docker.splitlines():
        if line and not line.startswith((" ", "#")):
            check(line.split()[0] in {"FROM", "RUN", "COPY", "USER", "WORKDIR", "VOLUME", "ENV",
                                      "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT",
                                      "CMD", "ARG"}, f"Dockerfile instruction: {line}")

    # The real binary, started with the ConfigMap's and the image's configs, serves the
    # probes, the ServiceMonitor's path and the health check.
    for name, text in [("k8s", toml_text), ("image", image_conf)]:
        s = Serve(exe, tmp, f"manifest-{name}", text)
        for path in [live["path"], ready["path"], sm["path"], hc.group(2)]:
            status, body = s.get(path)
            check(status == 200, f"{name}: GET {path} is 200, got {status}")
        check("micdrop_calls_active" in s.get(sm["path"])[1], "the metrics are there")
        s.proc.send_signal(signal.SIGTERM)
        check(s.wait_exit() == 0, "clean exit")

    # The dashboard queries only metrics that exist.
    with open(os.path.join(ROOT, "crates", "micdrop-core", "src", "telemetry.rs")) as f:
        names = set(re.findall(r'"(micdrop_[a-z_]+)"', f.read()))
    with open(os.path.join(ROOT, "deploy", "grafana", "micdrop.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs
            for m in re.findall(r"micdrop_[a-z_]+", e)}
    check(used and used <= names, f"dashboard metrics unknown: {used - names}")
    for stage_panel in ["p50", "p95"]:
        check(any(stage_panel in p["title"] and "stage" in p["targets"][0]["expr"]
                  for p in dash["panels"]), f"a {stage_panel} by stage panel")


# --- 2. Prometheus --------------------------------------------------------------------------


def test_prometheus(exe, tmp):
    s = Serve(exe, tmp, "prom", SIM_CONFIG)
    ws = call(s.port)
    spoken_turn(ws, "Quelle heure est-il ?")
    ws.close()
    text = s.get("/metrics")[1]
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True)
        check(r.returncode == 0, f"promtool check metrics: {r.stdout}{r.stderr}")
    port = free_port()
    conf = os.path.join(tmp, "prometheus.yml")
    with open(conf, "w") as f:
        f.write(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: micdrop\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{s.port}']\n"
        )
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={conf}", f"--storage.tsdb.path={tmp}/tsdb",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    PROCS.append(prom)
    wait_port(port)
    q = urllib.parse.quote("sum(micdrop_turn_latency_seconds_count)")
    value = None
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            status, body = http_get(port, f"/api/v1/query?query={q}")
            res = json.loads(body)["data"]["result"] if status == 200 else []
        except (OSError, ValueError, KeyError):
            res = []
        if res:
            value = float(res[0]["value"][1])
            if value > 0:
                break
        time.sleep(0.5)
    check(value is not None and value > 0, f"Prometheus: micdrop_turn_latency_seconds_count = {value}")
    # The stages are labelled.
    q = urllib.parse.quote('micdrop_turn_latency_seconds_count{stage="voice_to_voice"}')
    res = json.loads(http_get(port, f"/api/v1/query?query={q}")[1])["data"]["result"]
    check(res and float(res[0]["value"][1]) > 0, "voice_to_voice samples in Prometheus")
    log(f"prometheus: micdrop_turn_latency_seconds_count = {value}")
    prom.terminate()
    prom.wait(10)
    s.proc.send_signal(signal.SIGTERM)
    check(s.wait_exit() == 0, "clean exit")


# --- 3. nginx -------------------------------------------------------------------------------


def test_nginx(exe, tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    config = SIM_CONFIG + "[server]\ndrain_timeout_secs = 120\n"
    x = Serve(exe, tmp, "upstream-x", config)
    y = Serve(exe, tmp, "upstream-y", config)
    https, plain = free_port(), free_port()
    with open(os.path.join(ROOT, "deploy", "nginx", "micdrop.conf")) as f:
        site = f.read()
    for old, new in [
        ("server 127.0.0.1:8080 ", f"server 127.0.0.1:{x.port} "),
        ("server 127.0.0.1:8081 ", f"server 127.0.0.1:{y.port} "),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{plain};"),
        ("/etc/ssl/micdrop/fullchain.pem", cert),
        ("/etc/ssl/micdrop/privkey.pem", key),
    ]:
        check(old in site, f"deploy/nginx/micdrop.conf contains {old!r}")
        site = site.replace(old, new)
    with open(os.path.join(tmp, "micdrop.conf"), "w") as f:
        f.write(site)
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(
            f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
            "events { worker_connections 256; }\nhttp {\n"
            f"  access_log {tmp}/access.log;\n"
            + "".join(f"  {k}_temp_path {tmp}/{k};\n"
                      for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
            + f"  include {tmp}/micdrop.conf;\n}}\n"
        )
    nginx = subprocess.Popen(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log",
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    PROCS.append(nginx)
    wait_port(https)

    def active(s):
        return s.metric("micdrop_calls_active")

    # Plain HTTP redirects to https; /metrics is not public.
    check(http_get(plain, "/")[0] == 301, "plain http redirects to https")
    ctx = ssl.create_default_context(cafile=cert)
    with urllib.request.urlopen(f"https://localhost:{https}/readyz", context=ctx) as r:
        check(r.status == 200, "readyz through nginx")
    try:
        urllib.request.urlopen(f"https://localhost:{https}/metrics", context=ctx)
        check(False, "/metrics is public through nginx")
    except urllib.error.HTTPError as e:
        check(e.code == 403, f"/metrics through nginx: {e.code}")

    a = call(https, cafile=cert)
    on_a = x if active(x) == 1 else y
    other = y if on_a is x else x
    check(active(on_a) == 1 and active(other) == 0, "call A on one instance")
    b = call(https, cafile=cert)
    check(active(other) == 1, "least_conn: call B on the other instance")

    log(f"SIGTERM to {on_a.name} (call A on it, call B on {other.name})")
    on_a.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    while on_a.get("/readyz")[0] != 503:
        check(time.time() < deadline, "/readyz turns 503")
        time.sleep(0.05)
    check(other.get("/readyz")[0] == 200, "the other instance is ready")

    # A new call (a reconnecting caller) lands on the other instance.
    c = call(https, cafile=cert)
    check(active(other) == 2, "the new call is on the other instance")

    # Call A goes on through the drain; B is untouched.
    spoken_turn(a, "Quelle heure est-il ?")
    spoken_turn(b, "Quelle heure est-il ?")
    spoken_turn(c, "Quelle heure est-il ?")
    check(on_a.proc.poll() is None, "the draining instance waits for its call")

    # A hangs up: the draining instance exits at once, cleanly; B and C still talk.
    a.close()
    check(on_a.wait_exit(30) == 0, "the drained instance exits 0")
    log_a = "".join(on_a.log)
    check("drained" in log_a, f"drain logged:\n{log_a}")
    spoken_turn(b, "Merci")
    spoken_turn(c, "Merci")
    for ws in (b, c):
        ws.close()
    deadline = time.time() + 10
    while active(other) != 0:
        check(time.time() < deadline, "calls ended on the other instance")
        time.sleep(0.05)
    check(other.metric('micdrop_calls_total{outcome="client_closed"}') == 2, "B and C ended well")
    check(other.metric('micdrop_calls_total{outcome="shutdown"}') is None, "no 1001 on the other")
    nginx.terminate()
    nginx.wait(10)
    other.proc.send_signal(signal.SIGTERM)
    check(other.wait_exit() == 0, "clean exit")


def main():
    tests = {"manifests": test_manifests, "prometheus": test_prometheus, "nginx": test_nginx}
    chosen = sys.argv[1:] or list(tests)
    exe = binary()
    for name in chosen:
        tmp = tempfile.mkdtemp(prefix=f"micdrop-ops-{name}-")
        os.chmod(tmp, 0o755)
        log(f"{name} ...")
        try:
            tests[name](exe, tmp)
            log(f"{name}: ok")
        except Exception as e:  # noqa: BLE001 - report every failure, then fail
            FAILURES.append(name)
            log(f"{name}: FAILED: {type(e).__name__}: {e}")
        finally:
            for p in PROCS:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            PROCS.clear()
            shutil.rmtree(tmp, ignore_errors=True)
    if FAILURES:
        log(f"failed: {', '.join(FAILURES)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
