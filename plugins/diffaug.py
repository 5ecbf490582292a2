"""Placeholder while the diffaug plugin is being written (replaced by its implementation)."""


class DiffAugmentPlugin:
    """(not implemented yet)"""
