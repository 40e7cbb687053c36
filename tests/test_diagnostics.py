"""Depth diagnostics: per-layer gradient norms, warnings, and the per-layer re-run of the fused stack."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import compose_config, tiny_overrides
from stacked_rnn import train
from stacked_rnn.diagnostics import GradientFlow


def test_gradient_norms_are_logged_per_layer(tiny_archive, tmp_path):
    cfg = compose_config(tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", "model.cell=lstm",
                                        "model.layers=3", "trainer.max_epochs=1",
                                        "callbacks.gradient_flow.every_n_steps=1"))
    train.run(cfg)
    history = json.loads((tmp_path / "run" / "grad_flow.json").read_text())
    names = set(history[0]["norms"])
    assert names == {f"weight_{k}_l{i}" for k in ("ih", "hh") for i in range(3)}
    assert all(v > 0 for v in history[0]["norms"].values())
    assert (tmp_path / "run" / "grad_flow.png").stat().st_size > 1000

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert {f"grad/weight_hh_l{i}" for i in range(3)} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("grad/weight_ih_l0")) >= 10  # every step of the epoch
    assert "grad/by_layer" in events.Tags()["images"]


class FakeTrainer:
    global_step = 0
    logger = None


def test_vanishing_and_exploding_warn_once():
    rnn = torch.nn.RNN(3, 4, num_layers=3)
    model = torch.nn.Module()
    model.rnn = rnn
    flow = GradientFlow(every_n_steps=1, vanish_ratio=1e4, explode_norm=1e3)
    for p in rnn.parameters():
        p.grad = torch.ones_like(p)
    rnn.weight_ih_l0.grad.mul_(1e-6)
    rnn.weight_hh_l0.grad.mul_(1e-6)
    with pytest.warns(UserWarning, match="layer 0's weight gradient norm .* times smaller than the top layer"):
        flow.on_before_optimizer_step(FakeTrainer(), model, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow.on_before_optimizer_step(FakeTrainer(), model, None)  # once only
    rnn.weight_hh_l2.grad.mul_(1e4)
    with pytest.warns(UserWarning, match="exploding gradient .* layer 2"):
        flow.on_before_optimizer_step(FakeTrainer(), model, None)


def test_healthy_gradients_do_not_warn():
    model = torch.nn.Module()
    model.rnn = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    for p in model.rnn.parameters():
        p.grad = torch.full_like(p, 0.1)
    flow = GradientFlow(every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow.on_before_optimizer_step(FakeTrainer(), model, None)
    assert set(flow.epoch_sums) == {f"weight_{k}_l{i}{d}" for k in ("ih", "hh") for i in range(2) for d in ("", "_reverse")}


def test_bad_gradient_flow_settings_are_named():
    with pytest.raises(ValueError, match="vanish_ratio=0.5"):
        GradientFlow(vanish_ratio=0.5)
