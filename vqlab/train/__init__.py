"""Trainers: one per job, sharing small helpers."""
