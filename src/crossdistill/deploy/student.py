"""Where student training runs: in this process, as torchrun ranks on this machine, or as a Kubeflow job.

``run_student_train(cfg)`` is the student-train step. A process torchrun started, or one worker on the
``local`` backend, trains here. Otherwise it writes the validated config beside the run
(``<out>/launch/student-train.json``), starts ``workers`` ranks by ``launch.backend`` and waits for them:

- ``local``: the ranks on this machine, started as ``torchrun --standalone --nproc_per_node=<workers>``
  starts them (the CI path, and a multi-GPU node);
- ``trainjob`` / ``pytorchjob``: a Kubeflow Trainer TrainJob or a PyTorchJob
  (:mod:`crossdistill.deploy.trainjob`) whose pods reach ``out`` on object storage.

Rank 0 writes the model, the checkpoints and the log into ``out``; the result is read back from there,
so the step reports what the ranks did, and a rerun resumes from their checkpoints.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

from crossdistill import storage
from crossdistill.config import to_json
from crossdistill.errors import TrainingJobError
from crossdistill.train.trainer import StudentTrainConfig, TrainResult, read_result, train_student

log = logging.getLogger(__name__)

CONFIG_FILE = "launch/student-train.json"


def run_local_ranks(workers: int, config_uri: str) -> None:
    """Run ``workers`` ranks of ``crossdistill student-train --config <config_uri>`` on this machine, as
    ``torchrun --standalone`` would (elastic agent, c10d rendezvous on a free port, one thread per rank
    unless OMP_NUM_THREADS says otherwise), and wait for them; a failed rank is a TrainingJobError."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    args = ["-m", "crossdistill.cli", "student-train", "--config", config_uri]
    log.info("starting %d student-train ranks on this machine: %s %s", workers, sys.executable, " ".join(args))
    ours = "OMP_NUM_THREADS" not in os.environ  # torchrun's default for several ranks, unless the user set one
    if ours:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        elastic_launch(launch, sys.executable)(*args)
    except ChildFailedError as exc:
        failed = ", ".join(f"rank {rank} (exit status {f.exitcode})" for rank, f in sorted(exc.failures.items()))
        raise TrainingJobError(f"student-train with {workers} ranks failed: {failed}; the rank's error is in the "
                               "output above. A rerun with the same out resumes from the last checkpoint") from None
    finally:
        if ours:
            os.environ.pop("OMP_NUM_THREADS", None)


def run_student_train(cfg: StudentTrainConfig) -> TrainResult:
    """Train here, or start ``cfg.workers`` ranks where ``cfg.launch.backend`` says and wait for them."""
    if (cfg.workers == 1 and cfg.launch.backend == "local") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return train_student(cfg)
    if cfg.launch.backend != "local":
        from crossdistill.deploy import trainjob

        def shared(uris: str | list[str] | None) -> str | list[str] | None:
            return uris if uris is None else trainjob.shared_uri(uris) if isinstance(uris, str) \
                else [trainjob.shared_uri(u) for u in uris]

        # the job's pods see object storage, not this task's mounts of it
        cfg = cfg.model_copy(update={"out": shared(cfg.out), "train_data": shared(cfg.train_data),
                                     "soft_labels": shared(cfg.soft_labels)})
    config_uri = storage.join(cfg.out, CONFIG_FILE)
    storage.write_text(config_uri, to_json(cfg))
    if cfg.launch.backend == "local":
        run_local_ranks(cfg.workers, config_uri)
    else:
        trainjob.launch(cfg, config_uri)
    return read_result(cfg.out)
