"""The load of bench/chaos: CLIENTS threads for SECONDS against URL, each sending GETs and
POSTs (30%) with a unique Idempotency-Key; a POST that fails (5xx, or no answer) is sent again once
with the same key, as a user clicking again would. Prints a JSON summary."""

import http.client
import json
import sys
import threading
import time
import uuid
from collections import Counter

host, port, clients, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
gets, posts, lock = Counter(), Counter(), threading.Lock()


def request(conn, method, key):
    headers = {"Idempotency-Key": key} if key else {}
    body = b"amount=5" if method == "POST" else None
    try:
        conn.request(method, "/pay" if method == "POST" else "/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
        return status
    except Exception:
        conn.close()
        return "error"


def worker(n):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        if i % 10 < 3:
            key = uuid.uuid4().hex
            status = request(conn, "POST", key)
            if status in (500, 502, 503, 504, "error"):
                time.sleep(0.2)
                status = request(conn, "POST", key)
            with lock:
                posts[status] += 1
        else:
            status = request(conn, "GET", None)
            with lock:
                gets[status] += 1


threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"gets": {str(k): v for k, v in gets.items()}, "posts": {str(k): v for k, v in posts.items()}}))
