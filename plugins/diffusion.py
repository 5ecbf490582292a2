"""Placeholder while the diffusion plugin is being written (replaced by its implementation)."""


class DiffusionPlugin:
    """(not implemented yet)"""
