"""A real Kubernetes control plane on loopback with simulated GPU nodes, for tests and the local fleet."""
