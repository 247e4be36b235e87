"""gpufleet worker runtime: the HTTP server in every GPU pod of a WorkerPool."""
