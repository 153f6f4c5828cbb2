"""Shared blocks: attention, MLPs, norms, positions."""
