"""Evaluation: reconstruction metrics, codebook statistics, FID."""
