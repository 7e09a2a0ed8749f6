"""Container id and pod uid from a cgroup path, for every common runtime and cgroup driver.

Pure functions (no I/O), the one place the project parses these formats. A container id is the
64-hex id the runtime reports in the pod status (``containerd://<id>``, ``cri-o://<id>``,
``docker://<id>``). Formats seen in ``/proc/<pid>/cgroup`` (cgroup v2 ``0::<path>`` and each cgroup v1
``N:controller:<path>`` line of a hybrid host):

=====================================  ==========================================================================
containerd, cgroupfs driver            ``/kubepods/besteffort/pod<uid>/<id>``  (also ``/kubepods/pod<uid>/<id>``)
containerd, systemd driver             ``/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<u_i_d>.slice/cri-containerd-<id>.scope``
containerd, systemd, nested (kind)     ``/system.slice/containerd.service/kubepods-burstable-pod<u_i_d>.slice:cri-containerd:<id>``
CRI-O                                  ``.../crio-<id>.scope``   (``crio-conmon-<id>.scope`` is its monitor, not the container)
Docker (cgroupfs / systemd)            ``/docker/<id>``  /  ``/system.slice/docker-<id>.scope``
Podman                                 ``.../libpod-<id>.scope``  (``libpod-conmon-<id>.scope`` is its monitor)
=====================================  ==========================================================================

A path may also sit below the container's own cgroup (systemd's ``init.scope`` or a process that made a
sub-cgroup), so the search goes from the leaf up and takes the deepest component that carries an id.
"""  # noqa: E501 - the table above is of cgroup paths as the runtimes write them: wrapped, they would not read

from __future__ import annotations

import re

__all__ = ["container_id_from_cgroup_path", "pod_uid_from_cgroup_path", "container_id_from_proc_cgroup",
           "strip_runtime_prefix"]

_HEX64 = r"[0-9a-f]{64}"
# One path component (or one ':'-separated part of one) that is, or ends with, a container id:
#   "<id>", "<id>.scope", "cri-containerd-<id>.scope", "crio-<id>.scope", "docker-<id>.scope", "libpod-<id>"
_ID_COMPONENT = re.compile(rf"^(?:[a-z][a-z0-9_]*(?:-[a-z][a-z0-9_]*)*-)?({_HEX64})(?:\.scope)?$")
# Monitors that live beside the container in its pod, but are not the container.
_MONITORS = ("conmon",)
# "pod<uid>" as a component (cgroupfs: dashes) or inside a slice name (systemd: underscores).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)
# A /proc/<pid>/cgroup line: "hierarchy-id:controller-list:path".
_PROC_LINE = re.compile(r"^(\d+):([^:]*):(/.*)$")
_RUNTIME_PREFIX = re.compile(r"^[a-z0-9.+-]+://")


def _strip_line(path: str) -> str:
    """Accept a bare path or a whole /proc/<pid>/cgroup line."""
    m = _PROC_LINE.match(path.strip())
    return m.group(3) if m else path.strip()


def container_id_from_cgroup_path(path: str | None) -> str | None:
    """The 64-hex container id in a cgroup path (or /proc/<pid>/cgroup line), or None if there is none.

    >>> container_id_from_cgroup_path("/kubepods/besteffort/pod0e9c2a1b-5a5d-4c1e-9b1e-2f3c4d5e6f70/" + "ab" * 32)
    'abab...'  # doctest: +SKIP
    """
    if not path:
        return None
    for comp in reversed(_strip_line(path).split("/")):
        # systemd-nested form "kubepods-...-pod<u>.slice:cri-containerd:<id>": the id is the last part.
        for part in reversed(comp.split(":")):
            if not part or any(m in part for m in _MONITORS):
                continue
            m = _ID_COMPONENT.match(part)
            if m:
                return m.group(1)
    return None


def pod_uid_from_cgroup_path(path: str | None) -> str | None:
    """The pod uid (with dashes, as in ``metadata.uid``) in a kubelet-made cgroup path, or None."""
    if not path:
        return None
    for comp in reversed(_strip_line(path).split("/")):
        for part in comp.split(":"):
            m = _POD_UID.search(part)
            if m:
                return m.group(1).replace("_", "-")
    return None


def container_id_from_proc_cgroup(text: str) -> str | None:
    """The container id from the whole content of /proc/<pid>/cgroup: the v2 line first (``0::``), then the
    v1 lines (a hybrid host has both; a process can sit in different places on different hierarchies)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    lines.sort(key=lambda ln: 0 if ln.startswith("0::") else 1)
    for ln in lines:
        cid = container_id_from_cgroup_path(ln)
        if cid:
            return cid
    return None


def strip_runtime_prefix(container_id: str) -> str:
    """``containerd://<id>`` (pod status form) -> ``<id>``."""
    return _RUNTIME_PREFIX.sub("", container_id or "")
