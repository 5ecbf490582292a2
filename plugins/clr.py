"""Placeholder while the clr plugin is being written (replaced by its implementation)."""


class CLRPlugin:
    """(not implemented yet)"""
