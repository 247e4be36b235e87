"""Which tasks a pool's model can do, from its source and the pool's runtime.

One table for the operator (which refuses a job its pool's model cannot do, before any
dispatch) and the worker (whose loaders must agree; tests check that they do).
"""

from __future__ import annotations

from gpufleet.api.inputs import Task
from gpufleet.api.models import Runtime, ServedModel

BUILTIN_SCHEME = "builtin://"

# builtin://NAME models of the builtin runtime, and the tasks each does.
BUILTIN_MODEL_TASKS: dict[str, frozenset[Task]] = {
    "tiny-sd": frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT}),
    "vtracer": frozenset({Task.VECTORIZE}),
}

# What a model directory of each runtime can hold. The diffusers runtime serves diffusers
# pipelines (text-to-image, image-to-image, inpaint, train) and transformers models (SAM for
# segment, vision-language models for caption); which one a directory is shows only when it
# loads, so a pool narrows it with models[].tasks. A custom image can do anything it says.
RUNTIME_TASKS: dict[Runtime, frozenset[Task]] = {
    Runtime.BUILTIN: frozenset().union(*BUILTIN_MODEL_TASKS.values()),
    Runtime.DIFFUSERS: frozenset(
        {Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT, Task.TRAIN, Task.SEGMENT, Task.CAPTION}
    ),
    Runtime.CUSTOM: frozenset(Task),
}


# A LoRA attached to its base pipeline draws; it is not trained further.
LORA_TASKS = frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT})


def model_tasks(runtime: Runtime, model: ServedModel) -> frozenset[Task]:
    """The tasks ``model`` can do on ``runtime``: its declared tasks, within what its source
    and runtime can do."""
    if model.base is not None:
        possible = LORA_TASKS
    elif model.source.startswith(BUILTIN_SCHEME):
        possible = BUILTIN_MODEL_TASKS.get(model.source[len(BUILTIN_SCHEME) :], frozenset())
    else:
        possible = RUNTIME_TASKS[runtime]
    return possible if model.tasks is None else possible & frozenset(model.tasks)
