#!/usr/bin/env python3
"""Start-up figures of the bridge: time from process start to /readyz 200, and idle RSS.

Usage: bench/startup.py BIN CONFIG RUNS OUT.json
Starts `BIN serve --config CONFIG` RUNS times on free ports; each time polls /readyz every
millisecond from the moment the process was spawned, then (first run only) waits 2 s idle and
reads VmRSS and VmHWM. Writes {"ready_ms": [...], "idle_rss_kib": N, "idle_hwm_kib": N}.
Standard library only.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def main():
    binary, config, runs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ready, idle_rss, idle_hwm = [], None, None
    for i in range(runs):
        port, admin = free_port(), free_port()
        env = dict(os.environ, HOOKBRIDGE__LISTEN=f"127.0.0.1:{port}", HOOKBRIDGE__ADMIN_LISTEN=f"127.0.0.1:{admin}")
        t0 = time.monotonic()
        p = subprocess.Popen([binary, "serve", "--config", config], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{admin}/readyz"
        ms = None
        while time.monotonic() - t0 < 10:
            try:
                with urllib.request.urlopen(url, timeout=0.5) as r:
                    if r.status == 200:
                        ms = (time.monotonic() - t0) * 1000
                        break
            except Exception:
                pass
            time.sleep(0.001)
        ready.append(ms)
        if i == 0:
            time.sleep(2)
            idle_rss, idle_hwm = status_kib(p.pid, "VmRSS"), status_kib(p.pid, "VmHWM")
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    with open(out, "w") as f:
        json.dump({"ready_ms": ready, "idle_rss_kib": idle_rss, "idle_hwm_kib": idle_hwm}, f, indent=2)
    print(f"startup: ready in {sorted(x for x in ready if x is not None)} ms; idle RSS {idle_rss} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
