"""Models: autoencoders, discriminators and token generators."""
