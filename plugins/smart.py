"""Placeholder while the smart plugin is being written (replaced by its implementation)."""


class SmartPlugin:
    """(not implemented yet)"""
