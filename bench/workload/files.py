#!/usr/bin/env python3
"""File-heavy workload: create, stat and delete N small files in DIR.

Usage: files.py N DIR [write]
  (default) create N files of 64 bytes, stat each, delete each, remove DIR.
  write      only create the N files (used to grow a sandbox's upper layer).
Prints one JSON line with the per-phase times in seconds.
"""
import json
import os
import sys
import time

n = int(sys.argv[1])
d = sys.argv[2]
only_write = len(sys.argv) > 3 and sys.argv[3] == "write"
data = b"x" * 64
os.makedirs(d, exist_ok=True)
names = [os.path.join(d, "f%06d" % i) for i in range(n)]
t0 = time.perf_counter()
for p in names:
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
t1 = time.perf_counter()
if only_write:
    print(json.dumps({"create": t1 - t0}))
    sys.exit(0)
for p in names:
    os.stat(p)
t2 = time.perf_counter()
for p in names:
    os.unlink(p)
os.rmdir(d)
t3 = time.perf_counter()
print(json.dumps({"create": t1 - t0, "stat": t2 - t1, "delete": t3 - t2, "total": t3 - t0}))
