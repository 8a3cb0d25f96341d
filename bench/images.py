#!/usr/bin/env python3
"""Helpers of bench/images.sh (no daemon involved).

  seed HOST:PORT REPO TAG LAYERS MIB WORKDIR
      Pushes to a plain-HTTP Distribution registry an image of LAYERS layers, each a
      gzip-compressed tar holding one file /randN.bin of MIB MiB from /dev/urandom, with a
      Docker schema 2 manifest and an image config carrying the layers' diff ids. Writes
      WORKDIR/expect.json (file name -> size and sha256, and the config digest = image id).
  check-tar EXPECT.json
      Reads a tar stream (`docker export`) on stdin; exits 0 when every file of EXPECT.json
      is in it with the expected size and sha256, else prints what differs and exits 1.
  rss PIDFILE OUTFILE
      Until SIGTERM, every 10 ms sums VmRSS (KiB) of the pids listed in PIDFILE (re-read
      every 0.5 s, so that processes started meanwhile count); then writes the peak of that
      sum to OUTFILE.
"""
import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import signal
import sys
import tarfile
import time
import urllib.parse


def blob_upload(conn, host, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    r = conn.getresponse()
    r.read()
    if r.status == 200:
        return digest
    conn.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"", headers={"Content-Length": "0"})
    r = conn.getresponse()
    r.read()
    if r.status != 202:
        sys.exit(f"seed: start upload: HTTP {r.status}")
    loc = urllib.parse.urlsplit(r.getheader("Location"))
    query = (loc.query + "&" if loc.query else "") + "digest=" + urllib.parse.quote(digest)
    conn.request(
        "PUT",
        f"{loc.path}?{query}",
        body=data,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    r = conn.getresponse()
    r.read()
    if r.status != 201:
        sys.exit(f"seed: finish upload of {digest}: HTTP {r.status}")
    return digest


def seed(hostport, repo, tag, layers, mib, workdir):
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    expect = {"files": {}}
    descs, diff_ids, history = [], [], []
    for n in range(1, layers + 1):
        name = f"rand{n}.bin"
        data = os.urandom(mib << 20)
        expect["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            t.addfile(ti, io.BytesIO(data))
        tar = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=6, mtime=0)
        descs.append({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": len(gz),
            "digest": blob_upload(conn, host, repo, gz),
        })
        history.append({"created": "2023-11-14T22:13:20Z", "created_by": f"bench: layer {n}, {mib} MiB of random data"})
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/rand1.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    cfg = json.dumps(config, separators=(",", ":")).encode()
    cdig = blob_upload(conn, host, repo, cfg)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(cfg), "digest": cdig},
        "layers": descs,
    }
    body = json.dumps(manifest, indent=3).encode()
    conn.request(
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        body=body,
        headers={"Content-Type": manifest["mediaType"], "Content-Length": str(len(body))},
    )
    r = conn.getresponse()
    r.read()
    if r.status != 201:
        sys.exit(f"seed: put manifest: HTTP {r.status}")
    expect["id"] = cdig
    expect["manifest"] = "sha256:" + hashlib.sha256(body).hexdigest()
    expect["bytes"] = sum(d["size"] for d in descs)
    with open(os.path.join(workdir, "expect.json"), "w") as f:
        json.dump(expect, f, indent=1)


def check_tar(expect_path):
    want = json.load(open(expect_path))["files"]
    got = {}
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
        for m in t:
            name = m.name[2:] if m.name.startswith("./") else m.name.lstrip("/")
            if name in want and m.isfile():
                h = hashlib.sha256()
                f = t.extractfile(m)
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
                got[name] = {"size": m.size, "sha256": h.hexdigest()}
    bad = [n for n in want if got.get(n) != want[n]]
    for n in bad:
        print(f"  {n}: want {want[n]}, got {got.get(n)}", file=sys.stderr)
    return 1 if bad else 0


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss(pidfile, out):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    peak, pids, reread = 0, [], 0.0
    while not stop:
        now = time.monotonic()
        if now >= reread:
            try:
                pids = open(pidfile).read().split()
            except OSError:
                pass
            reread = now + 0.5
        peak = max(peak, sum(rss_kib(p) for p in pids))
        time.sleep(0.01)
    with open(out, "w") as f:
        f.write(f"{peak}\n")


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "seed" and len(sys.argv) == 8:
        a = sys.argv
        seed(a[2], a[3], a[4], int(a[5]), int(a[6]), a[7])
    elif cmd == "check-tar" and len(sys.argv) == 3:
        sys.exit(check_tar(sys.argv[2]))
    elif cmd == "rss" and len(sys.argv) == 4:
        rss(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
