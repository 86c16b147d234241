"""Seam-free stitching of overlapping fused tiles."""
