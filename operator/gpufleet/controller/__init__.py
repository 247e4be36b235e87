"""The operator: kopf handlers and the loops that apply the pure decisions in gpufleet.core."""
