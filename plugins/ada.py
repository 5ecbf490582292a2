"""Placeholder while the ada plugin is being written (replaced by its implementation)."""


class AdaPlugin:
    """(not implemented yet)"""
