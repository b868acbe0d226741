"""The memory layer: durable memory (`tether.memory`) and its content-addressed blobs."""
