#!/usr/bin/env python3
"""Build the agent's OCI image offline from real parts, and import it into a containerd.

No registry but Debian's archive and PyPI is reachable here, so the image is assembled the way a
Dockerfile would build it, from the same inputs (scripts/k8s/agent-image/packages.txt and
constraints.txt, and the Dockerfile's ENV/ENTRYPOINT/CMD, which this script reads), in three layers:

  1. base  Debian bookworm (+ -updates, -security) with packages.txt, by mmdebstrap from Debian's archive,
           with the same dpkg path excludes as debian:bookworm-slim; /usr/local/bin/clang -> clang-14
  2. deps  /opt/sensorium/venv with the pinned dependencies (wheels from PyPI, installed in a chroot)
  3. app   our wheel (built from this checkout) in that venv, /usr/local/bin/sensorium and sensorium-probe

Each layer is cached under $SENSORIUM_K8S_CACHE/agent-image, keyed by what goes into it: a changed source
tree rebuilds the app layer only (seconds), a changed lock the deps, a changed package list everything.
Layers are stored uncompressed (containerd imports them without a gunzip).

  agent_image.py build              build what changed; print the image tar, its name and manifest digest
  agent_image.py import SOCKET      build, then `ctr -n k8s.io images import` into the containerd at SOCKET
  agent_image.py lock               re-resolve the dependencies of .[kafka,k8s,otlp] into constraints.txt
Root is needed (mmdebstrap in root mode, chroot).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SPEC = HERE / "agent-image"
PACKAGES = SPEC / "packages.txt"
CONSTRAINTS = SPEC / "constraints.txt"
DOCKERFILE = REPO / "Dockerfile"
CACHE = Path(os.environ.get("SENSORIUM_K8S_CACHE", "/var/cache/sensorium-k8s"))
WORK = CACHE / "agent-image"
VENV = "/opt/sensorium/venv"
EXTRAS = "kafka,k8s,otlp"
SUITE = "bookworm"
# The sources debian:bookworm-slim has (so `apt-get install` in the Dockerfile sees the same versions).
SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# debian:bookworm-slim's /etc/dpkg/dpkg.cfg.d/docker: no manuals, docs or translations in the image.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/groff/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*", "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
)
# Bumped when a layer's recipe changes in a way its key does not see.
RECIPE = {"base": "1", "deps": "1", "app": "1"}
# What the wheel is made of: a change here rebuilds the app layer.
APP_SOURCES = ("pyproject.toml", "README.md", "core", "sensors", "exporters", "scripts/k8s/probe.py")


def log(msg: str) -> None:
    print(f"[agent-image] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise SystemExit(f"[agent-image] {' '.join(cmd[:4])}... failed (exit {r.returncode}):\n"
                         f"{(r.stdout or '')[-3000:]}{(r.stderr or '')[-3000:]}")
    return r


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()
                                                    and "__pycache__" not in p.parts and p.suffix != ".pyc")
        for p in files:
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + sha256_file(p).encode() + b"\0")
    return h.hexdigest()


def lines_of(path: Path) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]


# ---- the Dockerfile's image config ------------------------------------------------------------------------

def dockerfile_config(path: Path = DOCKERFILE) -> dict[str, object]:
    """Env, Entrypoint, Cmd and WorkingDir of the final stage, as the OCI image config spells them: the
    Dockerfile is the one place they are written."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    cfg: dict[str, object] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            env = {"PATH": env["PATH"]}
            cfg = {}
        elif word == "ENV":
            if "=" in rest.split(" ", 1)[0]:
                for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                    env[k] = v.strip('"')
            else:
                k, _, v = rest.partition(" ")
                env[k] = v.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            val = json.loads(rest)  # exec form only: the shell form would need /bin/sh -c
            if not (isinstance(val, list) and all(isinstance(x, str) for x in val)):
                raise SystemExit(f"Dockerfile: {word} must be in exec (JSON array) form")
            cfg["Entrypoint" if word == "ENTRYPOINT" else "Cmd"] = val
        elif word == "WORKDIR":
            cfg["WorkingDir"] = rest
    cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
    cfg.setdefault("WorkingDir", "/")
    return cfg


# ---- layers -----------------------------------------------------------------------------------------------

def _meta(name: str) -> dict[str, str] | None:
    try:
        m = json.loads((WORK / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return m if (WORK / f"{name}.tar").is_file() else None


def _save(name: str, key: str, tar: Path, seconds: float) -> dict[str, str]:
    m = {"key": key, "digest": "sha256:" + sha256_file(tar), "size": str(tar.stat().st_size),
         "built_in_s": f"{seconds:.0f}"}
    (WORK / f"{name}.json").write_text(json.dumps(m))
    return m


def _chroot(rootfs: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run in the staging root with its own /proc, in a private mount namespace (nothing stays mounted)."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return run(["unshare", "--mount", "--fork", "sh", "-c", script, str(rootfs), *cmd])


def _tar_dir(rootfs: Path, members: list[str], out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    run(["tar", "--numeric-owner", "--sort=name", "-C", str(rootfs), "-cf", str(tmp), *members])
    tmp.replace(out)


def base_layer() -> dict[str, str]:
    recipe = "\0".join([RECIPE["base"], PACKAGES.read_text(), *SOURCES, *DPKG_EXCLUDES])
    key = hashlib.sha256(recipe.encode()).hexdigest()
    m = _meta("base")
    if m and m["key"] == key:
        return m
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("[agent-image] mmdebstrap is missing: "
                         "apt-get install mmdebstrap (scripts/k8s/install-deps.sh)")
    t0 = time.monotonic()
    rootfs = WORK / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    (WORK / "rootfs.json").unlink(missing_ok=True)
    log(f"base: mmdebstrap {SUITE} minbase + {', '.join(lines_of(PACKAGES))} (a minute or two)")
    run(["mmdebstrap", "--mode=root", "--variant=minbase", "--aptopt=APT::Install-Recommends \"false\"",
         *(f"--dpkgopt={o}" for o in DPKG_EXCLUDES), "--include=" + ",".join(lines_of(PACKAGES)),
         SUITE, str(rootfs), *SOURCES])
    # As the Dockerfile's RUN: sensors look for `clang`, Debian names it clang-14.
    (rootfs / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    os.symlink("/usr/bin/clang-14", rootfs / "usr/local/bin/clang")
    _tar_dir(rootfs, ["."], WORK / "base.tar")
    (WORK / "rootfs.json").write_text(json.dumps({"base": key}))
    m = _save("base", key, WORK / "base.tar", time.monotonic() - t0)
    log(f"base: {int(m['size']) >> 20} MiB in {m['built_in_s']} s")
    return m


def _staging(base: dict[str, str], deps: dict[str, str] | None) -> Path:
    """The staging root holding base (+ deps) as built; re-extracted from the layer tars when it is not."""
    rootfs = WORK / "rootfs"
    try:
        state = json.loads((WORK / "rootfs.json").read_text())
    except (OSError, ValueError):
        state = {}
    want = {"base": base["key"], **({"deps": deps["key"]} if deps else {})}
    if rootfs.is_dir() and all(state.get(k) == v for k, v in want.items()):
        return rootfs
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    for name in want:
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-xf", str(WORK / f"{name}.tar")])
    (WORK / "rootfs.json").write_text(json.dumps(want))
    return rootfs


def _pip(*args: str) -> None:
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args])


def deps_layer(base: dict[str, str]) -> dict[str, str]:
    key = hashlib.sha256("\0".join([RECIPE["deps"], base["key"], CONSTRAINTS.read_text(), EXTRAS]).encode()).hexdigest()
    m = _meta("deps")
    if m and m["key"] == key:
        return m
    t0 = time.monotonic()
    rootfs = _staging(base, None)
    shutil.rmtree(rootfs / "opt/sensorium", ignore_errors=True)
    wheels = rootfs / "tmp/wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    log(f"deps: {len(lines_of(CONSTRAINTS))} pinned wheels from PyPI into {VENV}")
    # The lock is the whole closure: fetched without resolving, installed without deps.
    _pip("download", "-q", "--only-binary=:all:", "--no-deps", "-d", str(wheels), "-r", str(CONSTRAINTS))
    _chroot(rootfs, "python3", "-m", "venv", VENV)
    whls = sorted(f"/tmp/wheels/{p.name}" for p in wheels.glob("*.whl"))
    _chroot(rootfs, f"{VENV}/bin/pip", "install", "-q", "--no-cache-dir", "--no-index", "--no-deps", *whls)
    shutil.rmtree(wheels)
    _tar_dir(rootfs, ["opt/sensorium"], WORK / "deps.tar")
    state = json.loads((WORK / "rootfs.json").read_text())
    (WORK / "rootfs.json").write_text(json.dumps({**state, "deps": key}))
    m = _save("deps", key, WORK / "deps.tar", time.monotonic() - t0)
    log(f"deps: {int(m['size']) >> 20} MiB in {m['built_in_s']} s")
    return m


def app_layer(base: dict[str, str], deps: dict[str, str]) -> dict[str, str]:
    config = json.dumps(dockerfile_config(), sort_keys=True)
    key = hashlib.sha256("\0".join([RECIPE["app"], deps["key"], config,
                                    tree_digest([REPO / p for p in APP_SOURCES])]).encode()).hexdigest()
    m = _meta("app")
    if m and m["key"] == key:
        return m
    t0 = time.monotonic()
    rootfs = _staging(base, deps)
    site = next((rootfs / VENV.lstrip("/") / "lib").glob("python3*/site-packages"))
    with tempfile.TemporaryDirectory(dir=rootfs / "tmp") as tmp:
        # Built from a copy of the sources only: the checkout's build/ and egg-info must not leak in.
        src = Path(tmp) / "src"
        for p in APP_SOURCES:
            (REPO / p).is_dir() and shutil.copytree(REPO / p, src / p,
                                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            (REPO / p).is_file() and (src / p).parent.mkdir(parents=True, exist_ok=True)
            (REPO / p).is_file() and shutil.copy2(REPO / p, src / p)
        _pip("wheel", "-q", "--no-deps", "-w", str(Path(tmp) / "whl"), str(src))
        [whl] = list((Path(tmp) / "whl").glob("sensorium-*.whl"))
        _chroot(rootfs, f"{VENV}/bin/pip", "install", "-q", "--no-cache-dir", "--no-index", "--no-deps",
                "--force-reinstall", "/" + str(whl.relative_to(rootfs)))
    # Every dependency the wheel declares is in the venv, at a version it accepts.
    _chroot(rootfs, f"{VENV}/bin/pip", "check")
    # The layer holds what the wheel installed: the top-level entries its RECORD names (whole package
    # directories: --force-reinstall removed the previous version's), plus the two commands on PATH.
    record = next(site.glob("sensorium-*.dist-info")) / "RECORD"
    members: set[str] = set()
    for row in record.read_text().splitlines():
        full = Path(os.path.normpath(site / row.split(",", 1)[0]))
        top = site / full.relative_to(site).parts[0] if full.is_relative_to(site) else full
        members.add(str(top.relative_to(rootfs)))
    for extra in ("usr/local/bin/sensorium", "usr/local/bin/sensorium-probe"):
        (rootfs / extra).unlink(missing_ok=True)
    os.symlink(f"{VENV}/bin/sensorium", rootfs / "usr/local/bin/sensorium")
    shutil.copy2(HERE / "probe.py", rootfs / "usr/local/bin/sensorium-probe")
    os.chmod(rootfs / "usr/local/bin/sensorium-probe", 0o755)
    members |= {"usr/local/bin/sensorium", "usr/local/bin/sensorium-probe"}
    _tar_dir(rootfs, sorted(members), WORK / "app.tar")
    m = _save("app", key, WORK / "app.tar", time.monotonic() - t0)
    log(f"app: {int(m['size']) >> 10} KiB in {m['built_in_s']} s")
    return m


# ---- the image ----------------------------------------------------------------------------------------------

def image_name() -> str:
    """docker.io/sensorium/agent:<version>: the chart's default image (repository sensorium/agent, tag =
    appVersion = the package version), so `helm install` with default values runs what was imported."""
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version, "pyproject.toml has no version"
    return f"docker.io/sensorium/agent:{version.group(1)}"


def build() -> dict[str, str]:
    """Build (what changed) and write the OCI image-layout tarball; {tar, name, digest, size, layers}.
    One build at a time (setup and a test session may start one together): the others wait, then find
    the layers built."""
    import fcntl

    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build()


def _build() -> dict[str, str]:
    t0 = time.monotonic()
    base = base_layer()
    deps = deps_layer(base)
    app = app_layer(base, deps)
    layers = [("base", base), ("deps", deps), ("app", app)]
    name = image_name()
    created = "2026-01-01T00:00:00Z"  # fixed: the same inputs give the same digest
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": created, "config": dockerfile_config(),
        "rootfs": {"type": "layers", "diff_ids": [m["digest"] for _, m in layers]},
        "history": [{"created": created, "created_by": f"scripts/k8s/agent_image.py: {n} layer"} for n, _ in layers],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        # Uncompressed layers: valid OCI, and containerd imports them without a gunzip of ~0.5 GB.
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": m["digest"],
                    "size": int(m["size"])} for _, m in layers],
    }, sort_keys=True).encode()
    mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    out = WORK / "agent-image.tar"
    meta = WORK / "agent-image.json"
    try:
        done = json.loads(meta.read_text())
    except (OSError, ValueError):
        done = {}
    if done.get("digest") != mdigest or not out.is_file():
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}
        tmp = out.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            def add_bytes(arc: str, data: bytes) -> None:
                ti = tarfile.TarInfo(arc)
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
                tar.addfile(ti, __import__("io").BytesIO(data))
            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_bytes("index.json", json.dumps(index).encode())
            add_bytes(f"blobs/sha256/{mdigest[7:]}", manifest)
            add_bytes(f"blobs/sha256/{hashlib.sha256(config).hexdigest()}", config)
            for n, m in layers:
                tar.add(WORK / f"{n}.tar", arcname=f"blobs/sha256/{m['digest'][7:]}")
        tmp.replace(out)
        meta.write_text(json.dumps({"digest": mdigest, "name": name}))
    size = sum(int(m["size"]) for _, m in layers)
    log(f"{name} {mdigest[:19]}: {size >> 20} MiB in 3 layers (base {int(base['size']) >> 20}, "
        f"deps {int(deps['size']) >> 20}, app {int(app['size']) >> 10} KiB); {time.monotonic() - t0:.1f} s")
    return {"tar": str(out), "name": name, "digest": mdigest, "size": str(size)}


def import_into(socket: str, img: dict[str, str]) -> None:
    """Import into containerd's k8s.io namespace (the CRI's), unless that exact manifest is there already."""
    ctr = ["ctr", "--address", socket, "-n", "k8s.io"]
    have = run([*ctr, "images", "ls"]).stdout
    if any(ln.split()[:1] == [img["name"]] and img["digest"] in ln for ln in have.splitlines()):
        log(f"{img['name']} already in containerd at {socket}")
        return
    t0 = time.monotonic()
    run([*ctr, "images", "import", img["tar"]])
    log(f"imported {img['name']} into {socket} in {time.monotonic() - t0:.1f} s")


def lock() -> None:
    """Resolve .[kafka,k8s,otlp] afresh (newest versions PyPI offers) and write the closure to constraints.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "-q", "--only-binary=:all:", "-d", tmp, f"{REPO}[{EXTRAS}]")
        pins = []
        for p in Path(tmp).iterdir():
            if p.suffix == ".whl":
                name, version = p.name.split("-")[:2]
                if name != "sensorium":
                    pins.append(f"{name.replace('_', '-').lower()}=={version}")
    head = [ln for ln in CONSTRAINTS.read_text().splitlines() if ln.startswith("#")]
    CONSTRAINTS.write_text("\n".join(head + sorted(pins)) + "\n")
    log(f"{len(pins)} pins written to {CONSTRAINTS}")


def main(argv: list[str]) -> int:
    if os.geteuid() != 0 and argv[1:2] != ["lock"]:
        print("agent_image.py: root needed (mmdebstrap in root mode, chroot)", file=sys.stderr)
        return 1
    if argv[1:2] == ["build"] and len(argv) == 2:
        img = build()
    elif argv[1:2] == ["import"] and len(argv) == 3:
        img = build()
        import_into(argv[2], img)
    elif argv[1:] == ["lock"]:
        lock()
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(img))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
