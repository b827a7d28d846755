"""Multi-teacher distillation (seed 001): per-label experts, consensus experts, trust models, assembly."""

from crossdistill.experts.assembly import AssembleConfig, assemble, run_assemble
from crossdistill.experts.selection import ExpertEvaluateConfig, evaluate_experts, run_expert_evaluate
from crossdistill.experts.tables import PredictionTable, TeacherSource, load_source, load_table, save_table
from crossdistill.experts.trust import TrustModelTrainConfig, run_trust_model_train, train_trust_models

__all__ = [
    "AssembleConfig", "ExpertEvaluateConfig", "PredictionTable", "TeacherSource",
    "TrustModelTrainConfig", "assemble", "evaluate_experts", "load_source", "load_table", "run_assemble",
    "run_expert_evaluate", "run_trust_model_train", "save_table", "train_trust_models",
]
