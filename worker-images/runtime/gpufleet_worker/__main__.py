"""``gpufleet-worker``: start the worker's HTTP server. See ``config`` for the settings."""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: number CUDA devices like NVML does, so cuda:i is NVML's GPU i.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from .config import load_config

    try:
        config = load_config(argv)
    except (ValidationError, ValueError, OSError) as error:
        print(f"gpufleet-worker: invalid configuration: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from .auth import TokenError
    from .inventory import NoGpuError
    from .runtime import open_runtime
    from .server import create_app

    try:
        runtime = open_runtime(config)
    except (TokenError, NoGpuError) as error:
        print(f"gpufleet-worker: {error}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(runtime),
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=False,
        # Open event streams must not hold a stopping pod for long.
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
