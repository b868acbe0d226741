"""The runtime layer: who runs executions (flows and handles, the engine, the executor,
workers, queues), replay/fork, and the records read back from the store."""
