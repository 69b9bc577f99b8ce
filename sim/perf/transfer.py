"""KV-cache transfer between instances over a link (NVLink, PCIe, InfiniBand, Ethernet)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.catalog import CatalogError, ModelSpec


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A point-to-point link as a latency plus a bandwidth.

    ``time = latency_s + bytes / (bandwidth_bytes_per_s * efficiency_frac)``.
    """

    name: str
    """Link kind, e.g. ``nvlink``."""
    bandwidth_bytes_per_s: float
    """Peak bandwidth per direction, bytes/s."""
    latency_s: float
    """Set-up latency per transfer (handshake, first byte), seconds."""
    efficiency_frac: float = 0.8
    """Fraction of peak bandwidth a bulk transfer reaches."""

    def __post_init__(self) -> None:
        if not self.bandwidth_bytes_per_s > 0:
            raise CatalogError(
                f"link {self.name!r}: bandwidth_bytes_per_s must be > 0, got "
                f"{self.bandwidth_bytes_per_s}"
            )
        if self.latency_s < 0:
            raise CatalogError(f"link {self.name!r}: latency_s must be >= 0, got {self.latency_s}")
        if not 0 < self.efficiency_frac <= 1:
            raise CatalogError(
                f"link {self.name!r}: efficiency_frac must be in (0, 1], got {self.efficiency_frac}"
            )

    @property
    def effective_bytes_per_s(self) -> float:
        """Bandwidth a bulk transfer sees, bytes/s."""
        return self.bandwidth_bytes_per_s * self.efficiency_frac

    def transfer_time_s(self, num_bytes: float | np.ndarray) -> float | np.ndarray:
        """Seconds to move ``num_bytes`` bytes over this link alone."""
        return self.latency_s + np.asarray(num_bytes) / self.effective_bytes_per_s


LINKS: dict[str, LinkSpec] = {
    # NVLink 3/4 per direction per GPU; KV moves GPU to GPU (NIXL/UCX over NVLink).
    "nvlink_a100": LinkSpec("nvlink_a100", 300e9, 10e-6, 0.8),
    "nvlink_h100": LinkSpec("nvlink_h100", 450e9, 10e-6, 0.8),
    "pcie_gen4": LinkSpec("pcie_gen4", 32e9, 20e-6, 0.8),
    "pcie_gen5": LinkSpec("pcie_gen5", 64e9, 20e-6, 0.8),
    "infiniband_hdr_200g": LinkSpec("infiniband_hdr_200g", 25e9, 50e-6, 0.85),
    "infiniband_ndr_400g": LinkSpec("infiniband_ndr_400g", 50e9, 50e-6, 0.85),
    "ethernet_100g": LinkSpec("ethernet_100g", 12.5e9, 100e-6, 0.7),
    "ethernet_25g": LinkSpec("ethernet_25g", 3.125e9, 100e-6, 0.7),
}
"""Named link presets; a cluster config picks one by name or gives its own numbers."""


def get_link(name: str) -> LinkSpec:
    """Look up a link preset by name.

    Raises:
        CatalogError: listing the presets when ``name`` is unknown.
    """
    try:
        return LINKS[name]
    except KeyError:
        raise CatalogError(f"unknown link {name!r}; known links: {', '.join(LINKS)}") from None


def kv_bytes(model: ModelSpec, num_tokens: int | np.ndarray) -> float | np.ndarray:
    """Bytes of a request's whole KV cache (all layers, all heads) for ``num_tokens`` tokens."""
    return np.asarray(num_tokens) * model.kv_bytes_per_token


def kv_transfer_time_s(
    model: ModelSpec, num_tokens: int | np.ndarray, link: LinkSpec, num_parallel_links: int = 1
) -> float | np.ndarray:
    """Seconds to move ``num_tokens`` tokens of KV cache from one instance to another.

    Args:
        model: the model whose cache moves.
        num_tokens: tokens of context (prompt plus generated so far).
        link: the link each GPU pair uses.
        num_parallel_links: GPU pairs moving shards at once (min of the two TP x PP sizes when
            shards map one to one); the cache splits evenly across them.

    Returns:
        Seconds, without contention from other transfers (the simulator shares bandwidth).
    """
    if num_parallel_links < 1:
        raise CatalogError(f"num_parallel_links must be >= 1, got {num_parallel_links}")
    return link.transfer_time_s(kv_bytes(model, num_tokens) / num_parallel_links)
