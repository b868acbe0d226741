"""The core layer: one execution's calls (context, checkpoint, waits, serde, schema,
capture) and process settings. Imports nothing above it: not spending, not the runtime."""
