"""Compute: GPU inventory and allocation, usage and credits, and Dask clusters in notebooks."""

from __future__ import annotations


def cluster(**overrides):
    """A Dask client sized to this server (see :mod:`atlaslab.compute.dask_cluster`); imported on first use."""
    from .dask_cluster import cluster as _cluster

    return _cluster(**overrides)
