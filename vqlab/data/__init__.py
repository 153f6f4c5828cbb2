"""Input data: the built-in real datasets that work offline, and loaders for the rest."""
