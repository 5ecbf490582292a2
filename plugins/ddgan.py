"""Placeholder while the ddgan plugin is being written (replaced by its implementation)."""


class DDGANPlugin:
    """(not implemented yet)"""
