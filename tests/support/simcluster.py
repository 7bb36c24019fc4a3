"""The local cluster with its kubelet in no-process mode (:mod:`modelops.local.simpods`).

Used by ``tests/bench/bench_operator.py`` (a thousand serving pods on one machine) and
``tests/integration/test_simulated_pods.py``. The operator is left out, as with
``LocalCluster(operator=False)``: whoever uses it runs one.
"""

from __future__ import annotations

from pathlib import Path

from modelops.local.cluster import IMAGES, IN_CLUSTER_S3, LocalCluster
from modelops.local.kubelet import KubeletConfig, ProcessKubelet
from modelops.local.simpods import PodSimulator, Simulation


class SimulatedCluster(LocalCluster):
    """``LocalCluster(operator=False)`` whose Node runs no process: pods are simulated.

    ``requests_per_second`` and ``sketch_interval`` are the serving pods' pretended traffic
    (:class:`~modelops.local.simpods.Simulation`); ``max_pods`` is the Node's pods capacity
    (and its CPU capacity, so that tiny requests of that many pods fit).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        requests_per_second: float = 20.0,
        sketch_interval: float = 5.0,
        max_pods: int = 110,
    ) -> None:
        super().__init__(state_dir, operator=False)
        self.requests_per_second = requests_per_second
        self.sketch_interval = sketch_interval
        self.max_pods = max_pods

    async def _start_kubelet(self) -> None:
        # LocalCluster's, plus the simulation and the capacity.
        assert self.s3 is not None
        pki = self.control_plane.pki
        self.kubelet = ProcessKubelet(
            KubeletConfig(
                api_url=self.control_plane.url,
                ca_file=pki.ca_cert,
                client_cert=pki.cert("node"),
                client_key=pki.key("node"),
                proxy_cert=pki.cert("kube-proxy"),
                proxy_key=pki.key("kube-proxy"),
                serving_cert=pki.cert("kubelet-serving"),
                serving_key=pki.key("kubelet-serving"),
                node_name=self.control_plane.node_name,
                state_dir=self.state_dir,
                images=IMAGES,
                aliases={IN_CLUSTER_S3: self.s3.endpoint},
                services_file=self.services_file,
                simulation=Simulation(
                    reader_cert=pki.cert("admin"),
                    reader_key=pki.key("admin"),
                    requests_per_second=self.requests_per_second,
                    sketch_interval=self.sketch_interval,
                ),
                max_pods=self.max_pods,
                cpu_capacity=max(16, self.max_pods),
            )
        )
        await self.kubelet.start()

    @property
    def simulator(self) -> PodSimulator:
        assert self.kubelet is not None and self.kubelet.simulator is not None, "not started"
        return self.kubelet.simulator

    def alias(self, address: str, target: str) -> None:
        """Serving pods admitted from now on reach ``target`` where their env says
        ``address`` (e.g. an operator's store proxy, which the pods must not go through)."""
        assert self.kubelet is not None, "not started"
        self.kubelet.config.aliases[address] = target
