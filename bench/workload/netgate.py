"""Network gate benchmark helper (case 4). Only ever talks to the sealed test namespaces the
harness builds (documentation addresses, no route out).

  netgate.py serve ADDR                      echo (1 byte) on ADDR:8080, sink on ADDR:8081,
                                             source on ADDR:8082
  netgate.py latency ADDR N [proxy]          N x (connect, 1-byte round trip, close); JSON
  netgate.py throughput ADDR MiB [proxy]     send MiB to the sink; JSON with MiB/s
  netgate.py download ADDR MiB [proxy]       receive MiB from the source; JSON with MiB/s
`proxy` goes through the sandbox's HTTP proxy (CONNECT to 127.0.0.1:3128); otherwise a plain
connect (captured transparently inside a sandbox).
"""
import json
import socket
import statistics
import sys
import threading
import time

PROXY = ("127.0.0.1", 3128)
SINK_BUF = 4 << 20


def connect(addr, port, proxy):
    if not proxy:
        return socket.create_connection((addr, port), timeout=10)
    s = socket.create_connection(PROXY, timeout=10)
    s.sendall(f"CONNECT {addr}:{port} HTTP/1.1\r\nHost: {addr}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("proxy closed")
        head += chunk
    if b" 200" not in head.split(b"\r\n")[0]:
        raise OSError(head.split(b"\r\n")[0].decode())
    return s


def serve(addr):
    def echo(c):
        with c:
            d = c.recv(1)
            if d:
                c.sendall(d)

    def sink(c):
        # recv_into one reused buffer: recv(1 MiB) allocates a fresh 1 MiB bytes object per call
        # (and trims it), work that weighed on the sink rather than on the path under test.
        buf = bytearray(SINK_BUF)
        view = memoryview(buf)
        with c:
            n = 0
            while True:
                k = c.recv_into(view)
                if not k:
                    break
                n += k
            c.sendall(b"%d\n" % n)

    def source(c):
        # Reads how many MiB to send, sends them, closes.
        with c:
            mib = int(c.makefile("rb").readline())
            buf = b"\0" * (1 << 20)
            for _ in range(mib):
                c.sendall(buf)

    def listen(port, handler):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(512)
        while True:
            c, _ = ls.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=listen, args=(8080, echo), daemon=True).start()
    threading.Thread(target=listen, args=(8081, sink), daemon=True).start()
    threading.Thread(target=listen, args=(8082, source), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def latency(addr, n, proxy):
    xs = []
    for _ in range(n):
        t = time.perf_counter_ns()
        s = connect(addr, 8080, proxy)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        s.close()
        xs.append((time.perf_counter_ns() - t) / 1000)
    xs.sort()
    print(json.dumps({"median_us": statistics.median(xs), "p90_us": xs[int(len(xs) * 0.9)], "n": n}))


def throughput(addr, mib, proxy):
    buf = b"\0" * (1 << 20)
    s = connect(addr, 8081, proxy)
    t = time.perf_counter()
    for _ in range(mib):
        s.sendall(buf)
    s.shutdown(socket.SHUT_WR)
    got = int(s.makefile().readline())
    dt = time.perf_counter() - t
    assert got == mib << 20, got
    print(json.dumps({"mib_per_s": mib / dt, "mib": mib}))


def download(addr, mib, proxy):
    buf = bytearray(SINK_BUF)
    view = memoryview(buf)
    s = connect(addr, 8082, proxy)
    t = time.perf_counter()
    s.sendall(b"%d\n" % mib)
    got = 0
    while True:
        k = s.recv_into(view)
        if not k:
            break
        got += k
    dt = time.perf_counter() - t
    assert got == mib << 20, got
    print(json.dumps({"mib_per_s": mib / dt, "mib": mib}))


if __name__ == "__main__":
    cmd, addr = sys.argv[1], sys.argv[2]
    if cmd == "serve":
        serve(addr)
    elif cmd == "latency":
        latency(addr, int(sys.argv[3]), len(sys.argv) > 4)
    elif cmd == "throughput":
        throughput(addr, int(sys.argv[3]), len(sys.argv) > 4)
    elif cmd == "download":
        download(addr, int(sys.argv[3]), len(sys.argv) > 4)
