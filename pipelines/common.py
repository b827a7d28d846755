"""Task settings shared by the pipelines: caching and retries."""

from __future__ import annotations

from kfp.dsl import PipelineTask


def deterministic(task: PipelineTask, retries: int = 0) -> PipelineTask:
    """A step whose outputs depend only on its inputs: cache it; retry it when it is retry-safe."""
    task.set_caching_options(enable_caching=True)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def ephemeral(task: PipelineTask) -> PipelineTask:
    """A step with side effects outside its outputs (a server starts or stops): never cached."""
    return task.set_caching_options(enable_caching=False)
