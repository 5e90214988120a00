#!/usr/bin/env python3
"""Ingest benchmark for Airlock (run through scripts/bench-ingest).

Measures, in one run and on the filesystem that holds the server's data dir:
  1. raw disk write of BENCH_SIZE_MIB MiB in 1 MiB chunks, made durable with fdatasync (what
     `dd conv=fdatasync` measures, and the same work the server does before it answers a PUT:
     the baseline), twice per round, keeping the faster; for reference the same write into
     the page cache only (no fdatasync) and with O_DIRECT; and SHA-256 of the same bytes in
     memory on one core (OpenSSL through hashlib), the other bound: a PUT hashes every byte on
     the way and one stream's SHA-256 cannot be split;
  2. one large streamed PUT of the same size through Airlock, MB/s and ratio to raw;
  3. the server's RSS before (VmRSS) and its peak (VmHWM) after that upload;
  4. BENCH_SMALL files of 100 KB uploaded by BENCH_WORKERS client threads (POST + PUT each):
     PUT-accepted files/s and fully-promoted files/s (promoted count polled on /metrics).
Prints numbers only; never fails on a threshold. Standard library only.

Environment:
  AIRLOCK_BIN       the airlock binary (the wrapper sets it to target/release/airlock)
  BENCH_SIZE_MIB    large-file size in MiB (default 2048)
  BENCH_SMALL       number of small files (default 1000)
  BENCH_SMALL_BYTES size of a small file (default 100000)
  BENCH_WORKERS     concurrent client threads for small files (default 8)
  BENCH_ROUNDS      rounds of (raw write, large PUT), alternated; medians are reported (default 3)
  BENCH_STOP_SECS   how long to wait for the server after SIGTERM before SIGKILL (default 20)
  BENCH_DIR         parent of the temporary data dir (default: $TMPDIR or /tmp)
  BENCH_KEEP=1      keep the temporary dir (and the server log) afterwards
  BENCH_LOG         server log filter, passed as AIRLOCK_LOG (default: the server's default)
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

MIB = 1 << 20
API_KEY = "bench-" + os.urandom(12).hex()


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


SIZE_MIB = env_int("BENCH_SIZE_MIB", 2048)
SMALL_N = env_int("BENCH_SMALL", 1000)
SMALL_BYTES = env_int("BENCH_SMALL_BYTES", 100_000)
WORKERS = env_int("BENCH_WORKERS", 8)
ROUNDS = max(1, env_int("BENCH_ROUNDS", 3))
STOP_SECS = env_int("BENCH_STOP_SECS", 20)
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, flush=True)


def make_block():
    """One 1 MiB block of random bytes behind a fixed ASCII-free prefix, so that content
    sniffing sees plain binary (no accidental magic number such as `MZ` or `<?xml`)."""
    prefix = b"\x00\x01AIRLOCK-BENCH\x00\xfe\xff"
    return prefix + os.urandom(MIB - len(prefix))


BLOCK = make_block()


# --- /proc helpers -----------------------------------------------------------------------

def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def kib_field(st, key):
    v = st.get(key, "0 kB").split()
    return int(v[0]) if v else 0


def proc_cpu_seconds(pid):
    """utime+stime of a process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def self_cpu_seconds():
    t = os.times()
    return t.user + t.system


# --- HTTP helpers ------------------------------------------------------------------------

class Client:
    """A keep-alive connection to the server (one per thread)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, method, path, body=None, headers=None, auth=True):
        hdrs = dict(headers or {})
        if auth:
            hdrs["Authorization"] = f"Bearer {API_KEY}"
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.close()
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def json(self, method, path, obj=None, expect=(200,)):
        body = None if obj is None else json.dumps(obj).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, data = self.request(method, path, body=body, headers=headers)
        if status not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:500]!r}")
        return json.loads(data) if data else None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def url_path(url):
    m = re.match(r"^https?://[^/]+(/.*)$", url)
    if not m:
        raise RuntimeError(f"unexpected upload url {url}")
    return m.group(1)


def metrics_counts(client):
    """(files by status, deliveries by (subscription, state)) from /metrics."""
    status, data = client.request("GET", "/metrics", auth=False)
    files, deliveries = {}, {}
    if status != 200:
        return files, deliveries
    for line in data.decode().splitlines():
        m = re.match(r'^airlock_files\{status="([^"]+)"\} (\d+)$', line)
        if m:
            files[m.group(1)] = int(m.group(2))
            continue
        m = re.match(r'^airlock_deliveries\{subscription="([^"]+)",state="([^"]+)"\} (\d+)$', line)
        if m:
            deliveries[(m.group(1), m.group(2))] = int(m.group(3))
    return files, deliveries


def create_upload(client, filename, size=None):
    req = {"kind": "bench", "filename": filename, "content_type": "application/octet-stream"}
    if size is not None:
        req["size"] = size
    return client.json("POST", "/v1/uploads", req, expect=(201,))


# --- server ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.port = free_port()
        self.log_path = os.path.join(workdir, "server.log")
        self.proc = None

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        config = os.path.join(self.workdir, "airlock.toml")
        with open(config, "w") as f:
            f.write('[kinds.bench]\nmax_bytes = 3000000000\nallowed_types = ["*/*"]\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
        env.update({
            "AIRLOCK_DATA_DIR": self.data_dir,
            "AIRLOCK_LISTEN": f"127.0.0.1:{self.port}",
            "AIRLOCK_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "AIRLOCK_BOOTSTRAP_API_KEY": API_KEY,
            # Measure capacity, not the per-key request limiter (ignored by builds without it).
            "AIRLOCK_RATE_LIMIT": "1000000",
        })
        if os.environ.get("BENCH_LOG"):
            env["AIRLOCK_LOG"] = os.environ["BENCH_LOG"]
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--config", config, "serve"],
            env=env, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/readyz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after 60 s:\n{self.log_tail()}")

    @property
    def pid(self):
        return self.proc.pid

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            t0 = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_SECS)
                log(f"server stopped {time.perf_counter() - t0:.2f} s after SIGTERM "
                    f"(exit {self.proc.returncode})")
            except subprocess.TimeoutExpired:
                log(f"note: server still running {STOP_SECS} s after SIGTERM; sent SIGKILL")
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


# --- 1. raw disk ---------------------------------------------------------------------------

def raw_disk(dir_, size_mib):
    """(MB/s into the page cache, MB/s until durable): one write, then fdatasync."""
    path = os.path.join(dir_, "raw-baseline.bin")
    mv = memoryview(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(size_mib):
            n = 0
            while n < MIB:
                n += os.write(fd, mv[n:])
        t1 = time.perf_counter()
        os.fdatasync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
        os.unlink(path)
    nbytes = size_mib * MIB
    return nbytes / (t1 - t0) / 1e6, nbytes / (t2 - t0) / 1e6


def raw_direct(dir_, size_mib):
    """MB/s of O_DIRECT writes in 4 MiB blocks (then fdatasync), or None where unsupported."""
    import mmap
    path = os.path.join(dir_, "raw-direct.bin")
    buf = mmap.mmap(-1, 4 * MIB)  # page-aligned, as O_DIRECT needs
    for i in range(4):
        buf[i * MIB:(i + 1) * MIB] = BLOCK
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except (OSError, AttributeError):
        return None
    try:
        t0 = time.perf_counter()
        for _ in range(size_mib // 4):
            os.write(fd, buf)
        os.fdatasync(fd)
        t1 = time.perf_counter()
    except OSError:
        return None
    finally:
        os.close(fd)
        os.unlink(path)
    return (size_mib // 4) * 4 * MIB / (t1 - t0) / 1e6


def sha256_speed(size_mib):
    """MB/s of SHA-256 over size_mib MiB in memory, on one core."""
    import hashlib
    h = hashlib.sha256()
    mv = memoryview(BLOCK)
    t0 = time.perf_counter()
    for _ in range(size_mib):
        h.update(mv)
    return size_mib * MIB / (time.perf_counter() - t0) / 1e6


def release_object(data_dir, file_id):
    """Writes back and drops the stored object's page cache (the bytes stay on disk)."""
    import glob
    for path in glob.glob(os.path.join(data_dir, "objects", "*", "*", file_id, "*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --- 2/3. one large PUT --------------------------------------------------------------------

def wait_status(client, file_id, want=("promoted",), timeout=600):
    deadline = time.time() + timeout
    f = None
    while time.time() < deadline:
        f = client.json("GET", f"/v1/files/{file_id}")
        if f["status"] in want or f["status"] in ("quarantined", "expired", "deleted"):
            return f
        time.sleep(0.05)
    return f


def large_put(server, size_mib):
    client = Client(server.port)
    nbytes = size_mib * MIB
    up = create_upload(client, "large.bin", size=nbytes)
    file_id = up["file_id"]
    path = url_path(up["upload"]["url"])
    headers = dict(up["upload"].get("headers") or {})

    before = proc_status(server.pid)
    rss_before = kib_field(before, "VmRSS")
    hwm_before = kib_field(before, "VmHWM")

    # Sample VmRSS while the upload runs (VmHWM is the authoritative peak; this shows when).
    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append(kib_field(proc_status(server.pid), "VmRSS"))
            stop.wait(0.1)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    conn.connect()
    sock = conn.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
    mv = memoryview(BLOCK)
    srv_cpu0, cli_cpu0 = proc_cpu_seconds(server.pid), self_cpu_seconds()
    t0 = time.perf_counter()
    conn.putrequest("PUT", path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", str(nbytes))
    conn.endheaders()
    for _ in range(size_mib):
        sock.sendall(mv)  # never more than this one 1 MiB block in memory
    t_sent = time.perf_counter()
    resp = conn.getresponse()
    body = resp.read()
    t1 = time.perf_counter()
    srv_cpu, cli_cpu = proc_cpu_seconds(server.pid) - srv_cpu0, self_cpu_seconds() - cli_cpu0
    conn.close()
    stop.set()
    th.join()

    after = proc_status(server.pid)
    if resp.status != 200:
        raise RuntimeError(f"large PUT: HTTP {resp.status}: {body[:500]!r}")
    result = json.loads(body)
    if result.get("bytes") != nbytes:
        raise RuntimeError(f"large PUT stored {result.get('bytes')} bytes, sent {nbytes}")

    # Let it go through the pipeline before the small-file phase starts.
    tp0 = time.perf_counter()
    f = wait_status(client, file_id)
    tp = time.perf_counter() - tp0
    client.close()
    return {
        "mbps": nbytes / (t1 - t0) / 1e6,
        "secs": t1 - t0,
        "send_secs": t_sent - t0,
        "finish_secs": t1 - t_sent,
        "rss_before_kib": rss_before,
        "hwm_before_kib": hwm_before,
        "hwm_after_kib": kib_field(after, "VmHWM"),
        "rss_after_kib": kib_field(after, "VmRSS"),
        "rss_sampled_max_kib": max(samples) if samples else 0,
        "server_cpu": srv_cpu,
        "client_cpu": cli_cpu,
        "final_status": f["status"] if f else "?",
        "to_promoted_secs": tp,
        "file_id": file_id,
    }


# --- 4. many small files -------------------------------------------------------------------

def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def index_claimer(n):
    """A thread-safe source of the indices 0..n-1: each call returns the next, or None."""
    lock = threading.Lock()
    next_idx = [0]

    def claim():
        with lock:
            i = next_idx[0]
            if i >= n:
                return None
            next_idx[0] += 1
            return i
    return claim


def raw_small(dir_, n, size, workers):
    """The raw baseline of many small files: `workers` threads write n files of `size` bytes
    to the disk, each made durable like an upload (write, fdatasync, fsync of its new
    directory). Returns files/s."""
    root = os.path.join(dir_, "raw-small")
    os.makedirs(root, exist_ok=True)
    body = BLOCK[:size]
    claim = index_claimer(n)
    start = threading.Event()

    def worker():
        start.wait()
        while (i := claim()) is not None:
            d = os.path.join(root, str(i))
            os.mkdir(d)
            fd = os.open(os.path.join(d, "f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, i.to_bytes(8, "big") + body[8:])
                os.fdatasync(fd)
            finally:
                os.close(fd)
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def small_files(server, n, size, workers):
    body_base = BLOCK[:size]
    lock = threading.Lock()
    claim = index_claimer(n)
    file_ids = [None] * n
    post_lat, put_lat, accepted_at = [], [], []
    errors = []
    start = threading.Event()

    def worker():
        c = Client(server.port)
        # open the keep-alive connection before the clock starts
        c._connect()
        start.wait()
        while (i := claim()) is not None:
            try:
                body = i.to_bytes(8, "big") + body_base[8:]  # distinct content per file
                a = time.perf_counter()
                up = create_upload(c, f"small-{i}.bin", size=size)
                b = time.perf_counter()
                hdrs = dict(up["upload"].get("headers") or {})
                st, data = c.request("PUT", url_path(up["upload"]["url"]), body=body,
                                     headers=hdrs, auth=False)
                d = time.perf_counter()
                if st != 200:
                    raise RuntimeError(f"PUT: HTTP {st}: {data[:300]!r}")
                file_ids[i] = up["file_id"]
                with lock:
                    post_lat.append(b - a)
                    put_lat.append(d - b)
                    accepted_at.append(d)
            except Exception as e:  # keep going; report errors
                with lock:
                    errors.append(f"file {i}: {e}")
        c.close()

    mon = Client(server.port)
    files0, _ = metrics_counts(mon)
    promoted0 = files0.get("promoted", 0)
    failed0 = files0.get("quarantined", 0)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    srv_cpu0, cli_cpu0 = proc_cpu_seconds(server.pid), self_cpu_seconds()
    t0 = time.perf_counter()
    start.set()

    # Poll /metrics every 50 ms until all N are promoted (or no progress for 60 s).
    timeline = []  # (t, accepted, promoted)
    promoted = 0
    t_done = None
    last_progress = time.perf_counter()
    last_seen = -1
    metrics_lat = []
    while True:
        a = time.perf_counter()
        files, _ = metrics_counts(mon)
        metrics_lat.append(time.perf_counter() - a)
        now = time.perf_counter()
        promoted = files.get("promoted", 0) - promoted0
        failed = files.get("quarantined", 0) - failed0
        with lock:
            acc = len(accepted_at)
        timeline.append((now - t0, acc, promoted))
        if promoted >= n:
            t_done = now
            break
        if promoted + failed != last_seen:
            last_seen = promoted + failed
            last_progress = now
        all_sent = all(not t.is_alive() for t in threads)
        if all_sent and promoted + failed >= acc and acc + len(errors) >= n:
            t_done = now  # everything is in a terminal state (some failed)
            break
        if now - last_progress > 60:
            log(f"  no progress for 60 s (promoted {promoted}, quarantined {failed}, accepted {acc}); giving up")
            break
        time.sleep(max(0.0, 0.05 - (time.perf_counter() - a)))
    for t in threads:
        t.join()
    srv_cpu, cli_cpu = proc_cpu_seconds(server.pid) - srv_cpu0, self_cpu_seconds() - cli_cpu0
    wall = (t_done or time.perf_counter()) - t0
    files, deliveries = metrics_counts(mon)

    # Where time goes: per-stage latency from a sample of files' event timestamps.
    stages = {}
    sample = [fid for fid in file_ids if fid][:: max(1, n // 40)]
    for fid in sample:
        try:
            evs = mon.json("GET", f"/v1/files/{fid}/events")["events"]
        except Exception:
            continue
        at = {}
        for e in evs:
            at.setdefault(e["event_type"], parse_ts(e["created_at"]))
        chain = ["upload.requested", "file.uploaded", "validation.started",
                 "validation.passed", "file.promoted"]
        for x, y in zip(chain, chain[1:]):
            if x in at and y in at:
                stages.setdefault(f"{x} -> {y}", []).append((at[y] - at[x]).total_seconds())
        if "upload.requested" in at and "file.promoted" in at:
            stages.setdefault("requested -> promoted (total)", []).append(
                (at["file.promoted"] - at["upload.requested"]).total_seconds())
    mon.close()

    acc_wall = (max(accepted_at) - t0) if accepted_at else float("nan")
    return {
        "n": n,
        "accepted": len(accepted_at),
        "promoted": promoted,
        "errors": errors,
        "accepted_per_s": len(accepted_at) / acc_wall if accepted_at else 0.0,
        "accept_secs": acc_wall,
        "promoted_per_s": promoted / wall if wall > 0 else 0.0,
        "promote_secs": wall,
        "complete": t_done is not None and promoted >= n,
        "post_lat": post_lat,
        "put_lat": put_lat,
        "metrics_lat": metrics_lat,
        "timeline": timeline,
        "server_cpu": srv_cpu,
        "client_cpu": cli_cpu,
        "files": files,
        "deliveries": deliveries,
        "stages": stages,
    }


def parse_ts(s):
    # RFC 3339 with up to nanoseconds; datetime wants at most microseconds.
    s = s.replace("Z", "+00:00")
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", s)
    if m and m.group(2):
        s = m.group(1) + m.group(2)[:7] + m.group(3)
    return datetime.fromisoformat(s)


# --- main ----------------------------------------------------------------------------------

def main():
    binary = os.environ.get("AIRLOCK_BIN")
    if not binary or not os.access(binary, os.X_OK):
        sys.exit(f"AIRLOCK_BIN ({binary!r}) is not an executable; run scripts/bench-ingest")
    parent = os.environ.get("BENCH_DIR") or tempfile.gettempdir()
    workdir = tempfile.mkdtemp(prefix="airlock-bench-", dir=parent)
    server = Server(binary, workdir)
    need = (ROUNDS + 2) * SIZE_MIB * MIB + SMALL_N * SMALL_BYTES * 2 + 256 * MIB
    free = shutil.disk_usage(workdir).free
    log(f"airlock ingest benchmark: {binary}")
    log(f"  data dir {server.data_dir} ({free / 1e9:.1f} GB free), size {SIZE_MIB} MiB, "
        f"{SMALL_N} x {SMALL_BYTES} B small files, {WORKERS} workers, {os.cpu_count()} CPUs")
    if free < need:
        log(f"  warning: {need / 1e9:.1f} GB may be needed, {free / 1e9:.1f} GB free")
    try:
        os.makedirs(server.data_dir, exist_ok=True)
        server.start()
        log(f"server pid {server.pid} on port {server.port}; load average {loadavg()}")
        log(f"1+2. raw disk write vs one large PUT, {SIZE_MIB} MiB each, {ROUNDS} alternating round(s)")
        # On a VM, page-cache writes into memory the guest has not touched recently can cost
        # several times more than into memory that was just freed (the host backs guest pages
        # lazily and may take freed ones back), so a raw write is bimodal from run to run. Each
        # round therefore writes the raw file twice back to back and keeps the faster run
        # ("warm"); the PUT then starts right after the raw file is unlinked, so it too writes
        # into just-freed memory. The slowest raw run is shown as well ("cold").
        raws, raw_all, puts, shas, directs = [], [], [], [], []
        for r in range(1, ROUNDS + 1):
            shas.append(sha256_speed(min(SIZE_MIB, 1024)))
            pair = [raw_disk(server.data_dir, SIZE_MIB) for _ in range(2)]
            raw_all.extend(pair)
            raws.append((max(x[0] for x in pair), max(x[1] for x in pair)))
            direct = raw_direct(server.data_dir, SIZE_MIB)
            if direct:
                directs.append(direct)
            log(f"   round {r}: raw durable (write + fdatasync) {pair[0][1]:.0f} / {pair[1][1]:.0f} MB/s; "
                f"page cache only {pair[0][0]:.0f} / {pair[1][0]:.0f} MB/s; O_DIRECT "
                + (f"{direct:.0f} MB/s" if direct else "unsupported")
                + f"; SHA-256 one core {shas[-1]:.0f} MB/s")
            lg = large_put(server, SIZE_MIB)
            puts.append(lg)
            log(f"   round {r}: airlock PUT {lg['mbps']:.0f} MB/s in {lg['secs']:.2f} s (send {lg['send_secs']:.2f} s, "
                f"response {lg['finish_secs'] * 1000:.0f} ms after the last byte); "
                f"{lg['final_status']} {lg['to_promoted_secs']:.2f} s later; "
                f"CPU server {lg['server_cpu']:.2f} s ({lg['server_cpu'] / lg['secs']:.2f} cores), "
                f"client {lg['client_cpu']:.2f} s ({lg['client_cpu'] / lg['secs']:.2f} cores); "
                f"VmHWM {lg['hwm_after_kib'] / 1024:.1f} MiB")
            release_object(server.data_dir, lg["file_id"])
        sha = statistics.median(shas)
        raw_pc = statistics.median(x[0] for x in raws)
        raw_sync = statistics.median(x[1] for x in raws)
        put_mbps = statistics.median(x["mbps"] for x in puts)
        first, last = puts[0], puts[-1]
        raw_direct_mbps = statistics.median(directs) if directs else None
        raw_cold = min(x[1] for x in raw_all)
        spread = lambda xs: f"{min(xs):.0f}-{max(xs):.0f}"  # noqa: E731
        log(f"   spread: raw durable {spread([x[1] for x in raw_all])} MB/s over all runs, "
            f"airlock PUT {spread([x['mbps'] for x in puts])} MB/s")
        log(f"   median of rounds: raw durable {raw_sync:.0f} MB/s, airlock PUT {put_mbps:.0f} MB/s = "
            f"{put_mbps / raw_sync:.2f} of raw durable ({put_mbps / raw_cold:.2f} of the slowest raw run; "
            f"{put_mbps / raw_pc:.2f} of a page-cache-only write at {raw_pc:.0f} MB/s"
            + (f", {put_mbps / raw_direct_mbps:.2f} of O_DIRECT at {raw_direct_mbps:.0f} MB/s" if raw_direct_mbps else "")
            + ")")
        bound = min(raw_sync, sha)
        log(f"   SHA-256 on one core {sha:.0f} MB/s: the most a hashed stream can reach here is "
            f"{bound:.0f} MB/s = {bound / raw_sync:.2f} of raw durable; airlock PUT = {put_mbps / bound:.2f} of that bound")
        log(f"3. server memory: VmRSS before the first PUT {first['rss_before_kib'] / 1024:.1f} MiB "
            f"(VmHWM {first['hwm_before_kib'] / 1024:.1f}); VmHWM after the last {last['hwm_after_kib'] / 1024:.1f} MiB; "
            f"max sampled VmRSS {max(x['rss_sampled_max_kib'] for x in puts) / 1024:.1f} MiB; "
            f"VmRSS after {last['rss_after_kib'] / 1024:.1f} MiB")

        log(f"4. {SMALL_N} small files ...")
        sm = small_files(server, SMALL_N, SMALL_BYTES, WORKERS)
        ms = lambda xs, p: pct(xs, p) * 1000  # noqa: E731
        log(f"   accepted {sm['accepted']}/{sm['n']} in {sm['accept_secs']:.2f} s; "
            f"promoted {sm['promoted']} in {sm['promote_secs']:.2f} s"
            + ("" if sm["complete"] else "  (INCOMPLETE)"))
        log(f"   client latency ms  POST p50 {ms(sm['post_lat'], 50):.1f} p95 {ms(sm['post_lat'], 95):.1f} "
            f"max {ms(sm['post_lat'], 100):.1f} | PUT p50 {ms(sm['put_lat'], 50):.1f} "
            f"p95 {ms(sm['put_lat'], 95):.1f} max {ms(sm['put_lat'], 100):.1f} | "
            f"GET /metrics p50 {ms(sm['metrics_lat'], 50):.1f}")
        log(f"   CPU: server {sm['server_cpu']:.2f} s, client {sm['client_cpu']:.2f} s over "
            f"{sm['promote_secs']:.2f} s ({sm['server_cpu'] / sm['promote_secs']:.2f} / "
            f"{sm['client_cpu'] / sm['promote_secs']:.2f} cores)")
        # progress once per second: accepted / promoted
        marks, next_t = [], 1.0
        for t, a, p in sm["timeline"]:
            if t >= next_t:
                marks.append(f"{t:.0f}s:{a}/{p}")
                next_t = int(t) + 1.0
        if sm["timeline"]:
            t, a, p = sm["timeline"][-1]
            marks.append(f"{t:.1f}s:{a}/{p}")
        log("   progress (accepted/promoted): " + " ".join(marks))
        if sm["stages"]:
            log(f"   per-stage latency from event timestamps ({len(next(iter(sm['stages'].values())))} sampled files), ms:")
            for k, xs in sm["stages"].items():
                log(f"     {k:<42} p50 {ms(xs, 50):8.1f}  p95 {ms(xs, 95):8.1f}  max {ms(xs, 100):8.1f}")
        log("   files by status: " + ", ".join(f"{k}={v}" for k, v in sorted(sm["files"].items())))
        per_sub = {}
        for (sub, _st), v in sm["deliveries"].items():
            per_sub[sub] = per_sub.get(sub, 0) + v
        log("   deliveries by subscription (whole run): " + ", ".join(f"{k}={v}" for k, v in sorted(per_sub.items())))
        busy = {f"{s}/{st}": v for (s, st), v in sorted(sm["deliveries"].items()) if st != "done"}
        if busy:
            log("   deliveries not done: " + ", ".join(f"{k}={v}" for k, v in busy.items()))
        if sm["errors"]:
            log(f"   {len(sm['errors'])} client errors, first: {sm['errors'][0]}")
        st = proc_status(server.pid)
        log(f"   server VmRSS {kib_field(st, 'VmRSS') / 1024:.1f} MiB, VmHWM {kib_field(st, 'VmHWM') / 1024:.1f} MiB after this phase")
        # After the server's phase, and its files are only removed with the temp dir at the
        # end: deleting thousands of inodes just before makes ext4's next allocations slower
        # (it skips recently deleted inodes), which would burden whichever phase came next.
        raw_small_fps = raw_small(server.data_dir, SMALL_N, SMALL_BYTES, WORKERS)
        log(f"   raw: {raw_small_fps:.0f} files/s ({raw_small_fps * SMALL_BYTES / 1e6:.0f} MB/s) written durably "
            f"by {WORKERS} threads (write, fdatasync, fsync of the new directory): Airlock accepts "
            f"{sm['accepted_per_s'] / raw_small_fps:.2f} of that")

        log(f"load average at the end {loadavg()}")
        log("")
        log(f"summary ({SIZE_MIB} MiB; medians of {ROUNDS} round(s))")
        log(f"raw disk write:      {raw_sync:.0f} MB/s   (write + fdatasync; slowest run {raw_cold:.0f} MB/s; "
            f"page cache only {raw_pc:.0f} MB/s"
            + (f"; O_DIRECT {raw_direct_mbps:.0f} MB/s" if raw_direct_mbps else "") + ")")
        log(f"sha-256, one core:   {sha:.0f} MB/s   (bounds a hashed stream: {min(raw_sync, sha) / raw_sync:.2f} of raw at most)")
        log(f"airlock large PUT:   {put_mbps:.0f} MB/s  ({put_mbps / raw_sync:.2f} of raw, {put_mbps / min(raw_sync, sha):.2f} of the SHA-256 bound; "
            f"durable when answered)   "
            f"peak RSS {last['hwm_after_kib'] / 1024:.0f} MiB (RSS before {first['rss_before_kib'] / 1024:.0f} MiB)")
        log(f"small files ({SMALL_BYTES // 1000}KB): {sm['accepted_per_s']:.0f} accepted/s "
            f"({sm['accepted_per_s'] / raw_small_fps:.2f} of {raw_small_fps:.0f} raw durable writes/s), "
            f"{sm['promoted_per_s']:.0f} promoted/s"
            + ("" if sm["complete"] else f"  (only {sm['promoted']}/{sm['n']} promoted)"))
    except BaseException:
        if server.proc is not None:
            log("--- server log tail ---\n" + server.log_tail())
        raise
    finally:
        server.stop()
        if KEEP:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    # SIGTERM/SIGHUP: unwind through main's finally (stop the server, remove the temp dir).
    def _exit(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    main()
