#!/usr/bin/env python3
"""Pull timeline: where a daemon's `docker pull` spends its time, from its progress stream.

  pull_timeline.py SOCKET IMAGE:TAG

POSTs /images/create?fromImage=IMAGE&tag=TAG on the daemon's unix socket and stamps every
JSON progress line on arrival. Prints, per layer, when (ms from the request) its download
started and completed and when its extraction started and completed, then the total.
"""
import http.client
import json
import socket
import sys
import time
import urllib.parse


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sock, ref = sys.argv[1], sys.argv[2]
    image, tag = ref.rsplit(":", 1)
    conn = UnixHTTPConnection(sock)
    t0 = time.monotonic()
    q = urllib.parse.urlencode({"fromImage": image, "tag": tag})
    conn.request("POST", f"/v1.41/images/create?{q}", headers={"Content-Length": "0"})
    r = conn.getresponse()
    first = {}
    order = []
    while True:
        line = r.readline()
        if not line:
            break
        ms = (time.monotonic() - t0) * 1000
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if "error" in m:
            sys.exit(f"pull failed: {m['error']}")
        lid, status = m.get("id", ""), m.get("status", "")
        if not lid or lid == tag:
            continue
        if lid not in first:
            order.append(lid)
        first.setdefault((lid, status), ms)
        first.setdefault(lid, ms)
    total = (time.monotonic() - t0) * 1000
    print(f"{'layer':14} {'dl start':>9} {'dl done':>9} {'extract':>9} {'complete':>9}  (ms from request)")
    for lid in order:
        def at(s):
            v = first.get((lid, s))
            return f"{v:9.0f}" if v is not None else f"{'-':>9}"
        print(f"{lid:14} {at('Downloading')} {at('Download complete')} {at('Extracting')} {at('Pull complete')}")
    print(f"total {total:.0f} ms")


if __name__ == "__main__":
    main()
