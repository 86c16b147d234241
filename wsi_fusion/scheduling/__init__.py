"""Dask scheduling of the two pipeline phases."""
