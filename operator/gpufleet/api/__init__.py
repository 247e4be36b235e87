"""The gpufleet.io/v1alpha1 API: typed models that are the single source of truth for the CRDs."""
