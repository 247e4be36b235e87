"""Label, annotation and resource keys: the one place each key is spelled."""

# GPU Feature Discovery labels that NVIDIA's GPU operator puts on GPU nodes.
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_MEMORY_MIB = "nvidia.com/gpu.memory"  # per GPU, in MiB
GPU_COUNT = "nvidia.com/gpu.count"
GPU_PRESENT = "nvidia.com/gpu.present"
GPU_FAMILY = "nvidia.com/gpu.family"

# The extended resource the NVIDIA device plugin advertises.
GPU_RESOURCE = "nvidia.com/gpu"

# gpufleet's own keys. Pool templates may not set labels or annotations under GROUP/.
GROUP = "gpufleet.io"
POOL = f"{GROUP}/pool"  # on worker pods (and the pool's selector): the WorkerPool's name
WORKER = f"{GROUP}/worker"  # on worker pods: the worker's stable name within its pool
