"""Placeholder while the cmgan plugin is being written (replaced by its implementation)."""


class CMGANPlugin:
    """(not implemented yet)"""
