"""Shared fixtures for the kd_utils test suite.

Everything runs on the CPU with tiny synthetic data. One intra-op thread is used: for these small
convolutions on a 2-core machine, thread contention makes two threads several times slower than one.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

# KD_TEST_WITHOUT=optuna,timm,tensorboard runs the suite as on a machine without those optional packages: each
# import of them raises ImportError (as a missing package does), so the tests that need one skip
# (pytest.importorskip) and every other test must pass. `make test` runs this pass too.
for _name in filter(None, os.environ.get("KD_TEST_WITHOUT", "").split(",")):
    sys.modules[_name] = None

from kd_utils.data import DataConfig, prepare_data
from kd_utils.datasets import DATASETS
from kd_utils.train import TrainConfig

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s (still runs by default and in CI)")


@pytest.fixture(scope="session")
def synthetic_splits():
    """The synthetic dataset split as the pipeline does by default (train 1000, val 200, test 400)."""
    return prepare_data(DataConfig(dataset="synthetic"))


@pytest.fixture(scope="session")
def small_splits():
    """A small synthetic study: 200 training, 50 validation and 50 test images."""
    return prepare_data(DataConfig(dataset="synthetic", train_size=200, val_size=50, test_size=50))


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """A fast, deterministic CPU training configuration (override fields with dataclasses.replace)."""
    return TrainConfig(
        epochs=1, batch_size=32, lr=0.05, device="cpu", precision="fp32", progress=False, warmup_epochs=0.5
    )


@pytest.fixture
def plain_info():
    """Synthetic dataset facts without augmentation (no crop, no flip)."""
    return dataclasses.replace(DATASETS["synthetic"], crop_padding=0, hflip=False)
