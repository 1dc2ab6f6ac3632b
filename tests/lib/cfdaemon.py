"""The Python side of the integration harness (tests/lib/cf_test.sh: the same conventions) and
the one place Python tests get daemons from: start the REAL build/cacheflowd on a temporary unix
socket, listen for sd_notify datagrams, speak HTTP over a unix socket, count checks.
  environment  BUILD, CF_FIXTURES, CF_TEST_KEEP=1 (keep the temporary directory), as in the shell;
  output       "  ok   NAME", "FAIL NAME: DETAIL", last "N passed, N failed";
  a daemon     socket d.sock, HTTP side m.sock, log d.log in its temporary directory; a
               sanitizer report in its log fails stop() (as cf_daemon_stop does).
Python tests need it (not the shell library) for what a shell cannot do: an in-process gRPC
client, threads racing RPCs, a datagram socket standing in for systemd."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "cacheflowd")
CTL = os.path.join(ROOT, BUILD, "cacheflowctl")
sys.path.insert(0, os.path.join(ROOT, "lib", "client", "python"))
sys.path.insert(0, os.path.join(ROOT, BUILD, "py"))
FIXTURES = os.environ.get("CF_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
MODEL = os.path.join(FIXTURES, "public-llama-gqa")

import grpc  # noqa: E402
from cacheflow_client import CacheFlowError, Client, pb  # noqa: E402,F401


def wait_for(pred, timeout=20.0):
    """Poll pred() until it holds or `timeout` s pass (synchronise on state, never on a sleep)."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name, cond, detail=""):
        if cond:
            self.passed += 1
            print(f"  ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}")
        return cond

    def status(self, name, fn, code, contains=None):
        """fn() must raise CacheFlowError with `code` (and `contains` in the details)."""
        try:
            r = fn()
            if hasattr(r, "__next__"):
                list(r)
            return self.check(name, False, f"expected {code.name}, call succeeded")
        except CacheFlowError as e:
            ok = e.code == code and (contains is None or contains in e.details)
            return self.check(name, ok, f"expected {code.name}{' with ' + repr(contains) if contains else ''}, got {e.code.name}: {e.details}")

    def summary(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 else 1


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.extend(data.decode().split("\n"))

    def seen(self, prefix):
        with self.lock:
            return [m for m in self.messages if m.startswith(prefix)]

    def wait(self, prefix, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if self.seen(prefix):
                return True
            time.sleep(0.02)
        return False

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


class Daemon:
    def __init__(self, conf=None, notify=False, watchdog_usec=None):
        self.tmp = tempfile.mkdtemp(prefix="cfd-")
        self.sock = os.path.join(self.tmp, "d.sock")
        self.msock = os.path.join(self.tmp, "m.sock")
        self.conf_path = os.path.join(self.tmp, "cacheflowd.conf")
        self.addr = "unix:" + self.sock
        self.conf = {"listen": self.addr, "metrics_listen": "unix:" + self.msock,
                     "store_dir": os.path.join(self.tmp, "store"), "model": MODEL, "batch_window_us": "1000"}
        self.conf.update(conf or {})
        self.write_conf()
        self.notify = NotifyListener(os.path.join(self.tmp, "notify.sock")) if notify else None
        self.watchdog_usec = watchdog_usec
        self.proc = None
        self.log_path = os.path.join(self.tmp, "d.log")

    def write_conf(self, **changes):
        self.conf.update(changes)
        with open(self.conf_path, "w") as f:
            for k, v in self.conf.items():
                f.write(f"{k} = {v}\n")

    def start(self):
        env = dict(os.environ)
        if self.notify:
            env["NOTIFY_SOCKET"] = self.notify.path
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([BIN, "--config", self.conf_path], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        # Connect the gRPC client only once the socket accepts: a channel whose first attempts
        # fail backs off for seconds.
        end = time.time() + 60  # a limit for a wedged daemon, not a speed goal
        while time.time() < end and self.proc.poll() is None:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock)
                s.close()
                break
            except OSError:
                time.sleep(0.02)
        self.client = Client(self.addr, timeout=30)
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cacheflowd exited {self.proc.returncode}: {self.read_log()}")
            try:
                if self.client.health() == "SERVING":
                    return self
            except CacheFlowError:
                pass
            time.sleep(0.05)
        raise RuntimeError("cacheflowd did not become SERVING: " + self.read_log())

    def read_log(self):
        if getattr(self, "final_log", None) is not None:
            return self.final_log
        with open(self.log_path) as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def http(self, path, method="GET"):
        """(status, body) of an HTTP/1.0 request over the metrics unix socket."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.msock)
        s.sendall(f"{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.notify:
            self.notify.close()
        try:
            self.client.close()
        except Exception:
            pass
        self.final_log = None
        self.final_log = self.read_log()
        rc = self.proc.returncode if self.proc else None
        if "Sanitizer" in self.final_log or "runtime error:" in self.final_log:
            print("sanitizer report in the daemon log:\n" + self.final_log[-3000:])
            rc = -999  # fails every "exit 0" check
        if not os.environ.get("CF_TEST_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        return rc


def restore_in_thread(addr, engine_id, tokens, blocks):
    """Start a Restore on its own connection in a thread. Returns (thread, result): once the
    thread is joined, result holds code (grpc.StatusCode), details and t (seconds taken)."""
    result = {}

    def run():
        t0 = time.time()
        try:
            list(Client(addr).restore(engine_id, tokens, blocks))
            result["code"] = grpc.StatusCode.OK
        except CacheFlowError as e:
            result["code"], result["details"] = e.code, e.details
        result["t"] = time.time() - t0

    th = threading.Thread(target=run)
    th.start()
    return th, result


def parse_prometheus(text):
    """A strict reader of the Prometheus text format 0.0.4 subset we emit. Returns
    ({(name, labels): value}, [errors])."""
    import re
    samples, errors, types = {}, [], {}
    name_re = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    sample_re = re.compile(rf"^({name_re})(\{{(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\]|\\\\.)*\",?)*\}})? (\S+)$")
    for i, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                errors.append(f"line {i}: bad TYPE: {line}")
            elif parts[2] in types:
                errors.append(f"line {i}: TYPE of {parts[2]} twice")
            else:
                types[parts[2]] = parts[3]
            continue
        if line.startswith("# HELP ") or line.startswith("#"):
            continue
        m = sample_re.match(line)
        if not m:
            errors.append(f"line {i}: not a sample: {line!r}")
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            errors.append(f"line {i}: bad value {m.group(3)!r}")
            continue
        if m.group(1) not in types:
            errors.append(f"line {i}: sample {m.group(1)} before its TYPE")
        samples[(m.group(1), m.group(2) or "")] = v
    if not text.endswith("\n"):
        errors.append("exposition does not end with a newline")
    return samples, errors
