"""The local cluster with its kubelet in no-process mode (:mod:`modelops.local.simpods`).

Used by ``tests/bench/bench_operator.py`` (a thousand serving pods on one machine) and
``tests/integration/test_simulated_pods.py``. The operator is left out, as with
``LocalCluster(operator=False)``: whoever uses it runs one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from modelops.local.cluster import LocalCluster
from modelops.local.kubelet import KubeletConfig
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

    def _kubelet_config(self) -> KubeletConfig:
        # LocalCluster's, plus the simulation and the capacity.
        pki = self.control_plane.pki
        return dataclasses.replace(
            super()._kubelet_config(),
            simulation=Simulation(
                reader_cert=pki.cert("admin"),
                reader_key=pki.key("admin"),
                requests_per_second=self.requests_per_second,
                sketch_interval=self.sketch_interval,
            ),
            max_pods=self.max_pods,
            cpu_capacity=max(16, self.max_pods),
        )

    @property
    def simulator(self) -> PodSimulator:
        assert self.kubelet is not None and self.kubelet.simulator is not None, "not started"
        return self.kubelet.simulator

    def alias(self, address: str, target: str) -> None:
        """Serving pods admitted from now on reach ``target`` where their env says
        ``address`` (e.g. an operator's store proxy, which the pods must not go through)."""
        assert self.kubelet is not None, "not started"
        self.kubelet.config.aliases[address] = target
