"""Pretraining's resumable state and schedule (the full run is `make base`)."""

import torch

from burnlab.toy.pretrain import _learning_rate, _load_state, _save_state


def test_state_round_trip_restores_weights_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    _save_state(tmp_path / "state.safetensors", {"model": model}, optimizer, step=7)

    restored = torch.nn.Linear(3, 2)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=0.1)
    assert _load_state(tmp_path / "state.safetensors", {"model": restored}, restored_optimizer) == 7
    assert torch.equal(restored.weight, model.weight)
    for before, after in zip(model.parameters(), restored.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[before][key], restored_optimizer.state[after][key])


def test_missing_state_starts_at_step_zero(tmp_path):
    model = torch.nn.Linear(1, 1)
    assert _load_state(tmp_path / "none.safetensors", {"model": model}, None) == 0


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    assert _learning_rate(0, 100, 1.0, warmup=10) == 0.1
    assert _learning_rate(9, 100, 1.0, warmup=10) == 1.0
    assert abs(_learning_rate(100, 100, 1.0, warmup=10) - 0.1) < 1e-9
