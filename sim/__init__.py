"""Baton's simulation floor: catalogs, performance model, workloads, cluster simulator."""
