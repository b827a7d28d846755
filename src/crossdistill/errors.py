"""Error types. Every message names the file, field or tensor at fault and what was expected."""


class CrossdistillError(Exception):
    """Base class: anything crossdistill reports to the user as a clear, actionable error."""


class ConfigError(CrossdistillError, ValueError):
    """A configuration is invalid: unknown key, wrong type, out-of-range value."""


class DataError(CrossdistillError):
    """A dataset, shard or manifest is missing, corrupt or of the wrong shape."""


class ModelFormatError(CrossdistillError):
    """A model file is not in the format that was asked for, or cannot be loaded."""


class TeacherError(CrossdistillError):
    """The teacher cannot be reached or answered with something unusable."""


class TeacherUnavailableError(TeacherError):
    """The teacher did not answer within the deadline (after retries)."""


class TeacherResponseError(TeacherError):
    """The teacher answered with a wrong tensor: missing, wrong shape or dtype, NaN or Inf."""


class TrainingJobError(CrossdistillError):
    """Data-parallel training ranks started elsewhere (torchrun, a TrainJob, a PyTorchJob) failed or timed out."""
