"""The spending layer: model usage, prices and budgets, kept in the run's opaque spend slot."""
