"""kd_utils: knowledge distillation from a large teacher CNN to a small student CNN.

The pipeline, one module per step: data -> models -> losses -> distill -> train (teacher_cache) -> metrics ->
plots -> records -> results -> config -> runs (one run) -> teacher -> study (the protocol) -> stats -> report;
the CLI is flags + cli (search + sweep for tuning, summary for its tables); notebook holds the notebooks'
profiles, setup and closing cell.
"""

from .config import ExperimentConfig
from .data import DataConfig, DataSplits, TensorLoader, prepare_data
from .datasets import DATASETS, load_dataset
from .distill import DistillConfig, build_distiller
from .losses import (
    FeatureRegressor,
    attention_transfer_loss,
    dist_loss,
    dkd_loss,
    hidden_state_loss,
    kd_loss,
    regressor_loss,
    rkd_loss,
    soft_target_kl,
)
from .metrics import classification_metrics
from .models import build_model, count_parameters, list_models
from .records import RunRecord
from .runs import train_experiment
from .study import run_study
from .teacher import prepare_teacher
from .train import TrainConfig, fit

__all__ = [
    "DATASETS", "DataConfig", "DataSplits", "DistillConfig", "ExperimentConfig", "FeatureRegressor",
    "TensorLoader", "TrainConfig", "attention_transfer_loss", "build_distiller", "build_model",
    "classification_metrics", "count_parameters", "dist_loss", "dkd_loss", "fit", "hidden_state_loss", "kd_loss",
    "list_models", "load_dataset", "prepare_data", "prepare_teacher", "regressor_loss", "rkd_loss", "run_study", "RunRecord",
    "soft_target_kl", "train_experiment",
]  # fmt: skip
__version__ = "0.2.0"
