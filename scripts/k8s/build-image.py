#!/usr/bin/env python3
"""Write an OCI image-layout tarball by hand: busybox-static (with applet links) and a static pause.

No registry but PyPI/npm/Debian is reachable, so no image can be pulled; `ctr -n k8s.io images import`
takes this tarball. Two images sharing one layer: the sandbox image (entrypoint /pause) and the test
container image (busybox, /bin/sh).
Usage: build-image.py OUT.tar BUSYBOX PAUSE PAUSE_IMAGE_NAME TEST_IMAGE_NAME
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, 0
    tar.addfile(ti, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(ti)


def build_layer(busybox: str, pause: str) -> bytes:
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
            _add_dir(tar, d)
        with open(busybox, "rb") as f:
            _add_file(tar, "bin/busybox", f.read(), 0o755)
        with open(pause, "rb") as f:
            _add_file(tar, "pause", f.read(), 0o755)
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        _add_file(tar, "etc/group", b"root:x:0:\n", 0o644)
        for a in sorted(set(applets) - {"busybox"}):
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(ti)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    out, busybox, pause, pause_name, test_name = argv[1:]
    layer = build_layer(busybox, pause)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = gzip.compress(layer, mtime=0)
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return "sha256:" + d

    gz_digest = blob(gz)
    manifests = []
    for name, cfg in ((pause_name, {"Env": ["PATH=/bin"], "Entrypoint": ["/pause"], "WorkingDir": "/"}),
                      (test_name, {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"})):
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "sensorium scripts/k8s/build-image.py"}],
        }, sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": gz_digest,
                        "size": len(gz)}],
        }, sort_keys=True).encode()
        manifests.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest), "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        })
    index = {"schemaVersion": 2, "manifests": manifests}
    with tarfile.open(out, "w") as tar:
        _add_file(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
        _add_file(tar, "index.json", json.dumps(index).encode(), 0o644)
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        for d, data in blobs.items():
            _add_file(tar, f"blobs/sha256/{d}", data, 0o644)
    print(" ".join(m["digest"] for m in manifests))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
