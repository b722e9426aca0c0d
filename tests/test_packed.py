"""K students packed into one network train exactly as K separate students: same outputs, same gradients,
same SGD (momentum, Nesterov, weight decay) updates, BatchNorm statistics per student, ordinary state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_utils.models import build_model
from kd_utils.packed import pack, stack_inputs, unpack

K, B = 3, 8


def students(arch="student_cnn", channels=1):
    models = []
    for seed in range(K):
        torch.manual_seed(seed)
        models.append(build_model(arch, channels, 10))
    return models


def batches(seed=0, channels=1, size=28):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, channels, size, size, generator=g) for _ in range(K)], torch.randint(
        0, 10, (K, B), generator=g
    )


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def assert_close(a: dict, b: dict, rtol=1e-5, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), rtol=rtol, atol=atol), name


@pytest.mark.parametrize("train", [True, False])
def test_the_packed_forward_is_each_students_forward(train):
    models = students()
    packed = pack(models)
    xs, _ = batches()
    for m in (*models, packed):
        m.train(train)
    with torch.no_grad():
        out = packed(stack_inputs(xs))  # (B, K, N)
        for k, m in enumerate(models):
            assert torch.allclose(out[:, k], m(xs[k]), rtol=1e-5, atol=1e-5)


def test_steps_of_the_packed_net_equal_steps_of_each_student_alone():
    models = students()
    packed = pack(models)
    template = build_model("student_cnn", 1, 10)
    initial = {k: v.clone() for k, v in models[0].state_dict().items()}
    optimizers = [sgd(m.parameters()) for m in models]
    packed_optimizer = sgd(packed.parameters())
    for step in range(3):
        xs, ys = batches(seed=step)
        for m, opt, x, y in zip(models, optimizers, xs, ys):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        packed_optimizer.zero_grad()
        out = packed(stack_inputs(xs))
        sum(nn.functional.cross_entropy(out[:, k], ys[k]) for k in range(K)).backward()
        packed_optimizer.step()
        for state, m in zip(unpack(packed, template), models):
            assert_close(state, m.state_dict())  # weights and BatchNorm running statistics, per student
    assert any(not torch.equal(v, models[0].state_dict()[k]) for k, v in initial.items())  # the steps moved them


def test_unpacked_state_dicts_load_into_ordinary_models():
    models = students()
    states = unpack(pack(models), build_model("student_cnn", 1, 10))
    for state, m in zip(states, models):
        fresh = build_model("student_cnn", 1, 10)
        fresh.load_state_dict(state)  # keys and shapes as a separately trained run's
        assert_close(fresh.state_dict(), m.state_dict(), rtol=0, atol=0)


def test_only_plain_staged_networks_are_packed():
    with pytest.raises(ValueError, match="BasicBlock is not one of the packable layers"):
        pack([build_model("resnet18", 3, 10) for _ in range(2)])
    with pytest.raises(ValueError, match="one architecture"):
        pack([build_model("student_cnn", 1, 10), build_model("teacher_cnn", 1, 10)])
