"""Losses: reconstruction, perceptual, adversarial, spectral."""
