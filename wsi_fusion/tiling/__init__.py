"""Tile plans and tissue masks."""
