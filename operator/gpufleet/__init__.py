"""gpufleet: a Kubernetes operator for fleets of GPU workers running generative-AI jobs."""
