"""Student side: architectures, the distillation training loop, checkpoints and resume."""

from crossdistill.train.models import ModelSpec, build_model, load_student, save_student
from crossdistill.train.trainer import FeaturePair, StudentTrainConfig, TrainResult, train_student

__all__ = ["FeaturePair", "ModelSpec", "StudentTrainConfig", "TrainResult", "build_model", "load_student", "save_student",
           "train_student"]
