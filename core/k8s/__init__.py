"""Kubernetes support: which pod, namespace, container and workload is behind each event.

- `containerid`: container id / pod uid from cgroup paths (pure functions, every runtime format).
- `watcher`: `PodWatcher`, this node's pods from the API server, indexed by container id.
- `enrich`: `Enricher`, the pipeline stage adding Tetragon's ``pod`` object (hold-and-retry).
- `scope`: `PodScope` / `ScopeTracker`, the cgroups of the containers a policy's selectors pick.
- `policies`: `PolicyCrdWatcher`, TracingPolicy CRDs applied to the agent's PolicyManager live.

`start_kubernetes(cfg)` builds and starts the watcher and the enricher from the agent config. This package is
the ``kubernetes`` pipeline-stage plugin (`sensorium_stage`, entry point in ``sensorium.stages``, order 200:
after the process join): the agent builds it like any stage, and the `KubernetesStage` it makes is the stage.
Importing this package does not import the ``kubernetes`` client (only starting does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from sensorium import hookimpl
from sensorium.events import Event
from sensorium.hookspecs import StageSpec

log = logging.getLogger("sensorium.k8s")

__all__ = ["KubernetesStage", "start_kubernetes", "kubernetes_wanted", "sensorium_stage"]


def kubernetes_wanted(cfg: Any) -> bool:
    """Whether the config asks for pod enrichment (``kubernetes.enabled``; unset: on inside a pod or when
    a kubeconfig is configured)."""
    k = cfg.kubernetes
    if k.enabled is not None:
        return bool(k.enabled)
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST") or k.kubeconfig)


class KubernetesStage:
    """The running pod watcher and enricher of an agent; as a pipeline stage (a
    `sensorium.hookspecs.HoldingStage`), its enricher."""

    def __init__(self, watcher: Any, enricher: Any, api: Any = None, cfg: Any = None) -> None:
        self.watcher = watcher
        self.enricher = enricher
        self.api = api
        self.cfg = cfg
        self.policy_crds: Any = None

    def __call__(self, events: Sequence[Event]) -> Sequence[Event]:
        return self.enricher.process(events)

    @property
    def held(self) -> int:
        return int(self.enricher.held)

    def flush(self) -> list[Event]:
        return list(self.enricher.flush())

    def stats(self) -> dict[str, int]:
        return dict(self.enricher.stats())

    def start_policy_crds(self, manager: Any) -> None:
        """Load TracingPolicy / TracingPolicyNamespaced objects into ``manager`` live (when the config's
        ``kubernetes.policy_crds`` is on)."""
        if self.cfg is not None and not self.cfg.kubernetes.policy_crds:
            return
        from sensorium.k8s.policies import PolicyCrdWatcher

        self.policy_crds = PolicyCrdWatcher(self.api, manager, self.watcher.node_name,
                                            watch_timeout_s=self.watcher.watch_timeout_s).start()

    def status(self) -> dict[str, Any]:
        out = {"watcher": self.watcher.status(), "enrichment": self.enricher.status()}
        if self.policy_crds is not None:
            out["policy_crds"] = self.policy_crds.status()
        return out

    def stop(self) -> list[Any]:
        """Stop watching; returns the events still held (send them on before closing the exporters)."""
        held = self.enricher.flush()
        if self.policy_crds is not None:
            self.policy_crds.stop()
        self.watcher.stop()
        return held


def start_kubernetes(cfg: Any, api: Any = None) -> KubernetesStage | None:
    """Start the pod watcher (returns at once; the first list runs on its thread) and build the enricher.
    None when the config does not want Kubernetes. Raises when it does but no API client can be made."""
    if not kubernetes_wanted(cfg):
        return None
    from sensorium.k8s.enrich import Enricher
    from sensorium.k8s.watcher import PodWatcher, api_client

    k = cfg.kubernetes
    if api is None:
        api = api_client(str(k.kubeconfig) if k.kubeconfig else None)
    watcher = PodWatcher(api, cfg.node_name, watch_timeout_s=k.watch_timeout_s,
                         deleted_grace_s=k.deleted_pod_grace_s, resolve_workloads=k.resolve_workloads).start()
    proc_root = os.environ.get("SENSORIUM_PROC_ROOT") or "/proc"
    enricher = Enricher(watcher, hold_s=k.hold_s, max_held=k.hold_max_events, proc_root=proc_root)
    log.info("kubernetes: watching pods of node %s", cfg.node_name)
    return KubernetesStage(watcher, enricher, api, cfg)


def _stage(ctx: Any) -> KubernetesStage | None:
    return start_kubernetes(ctx.config)


@hookimpl
def sensorium_stage() -> StageSpec:
    """Pod enrichment, a pipeline-stage plugin: off unless the config wants Kubernetes (`kubernetes_wanted`)."""
    return StageSpec(name="kubernetes", description="adds each event's pod, namespace, container and workload "
                     "from this node's pods (kubernetes.enabled)", factory=_stage, order=200)
