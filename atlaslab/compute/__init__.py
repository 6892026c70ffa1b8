"""Compute: GPU inventory (and, later, Dask clusters)."""
