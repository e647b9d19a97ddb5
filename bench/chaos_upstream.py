"""An upstream for bench/chaos: answers GET with 200 and POST with 200 after recording its
Idempotency-Key in a log (one line per execution, to count duplicates). With --broken SHARE,
that share of requests is executed and then answered with bytes that are not HTTP."""

import argparse
import http.server
import random
import socketserver
import threading


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--broken", type=float, default=0.0)
    args = parser.parse_args()
    log = open(args.log, "a", buffering=1)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def answer(self, body):
            if random.random() < args.broken:
                self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(b"ok")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            key = self.headers.get("Idempotency-Key", "-")
            with lock:
                log.write(key + "\n")
            self.answer(b"paid")

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 1024

    Server(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
