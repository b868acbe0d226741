"""The operations layer: `Client`, operating on what is recorded."""
