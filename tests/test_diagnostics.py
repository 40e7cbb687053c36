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
    loggers = []


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


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_per_layer_rerun_matches_the_fused_module(cell, bidirectional):
    """Layers run one at a time with the fused weights give the fused top sequence and every layer's h_n."""
    from stacked_rnn.diagnostics import final_states, layer_outputs
    from stacked_rnn.model import StackedRNNClassifier

    torch.manual_seed(0)
    model = StackedRNNClassifier(50, cell=cell, layers=3, units=8, embed_dim=6, dropout=0.3,
                                 bidirectional=bidirectional, init="torch").eval()
    ids = torch.randint(2, 50, (3, 9))
    lengths = torch.tensor([9, 5, 2])
    ids[1, 5:], ids[2, 2:] = 0, 0
    outputs = layer_outputs(model, ids, lengths)
    assert len(outputs) == 3 and outputs[0].shape == (3, 9, 16 if bidirectional else 8)
    packed = torch.nn.utils.rnn.pack_padded_sequence(model.embedding(ids), lengths, batch_first=True,
                                                     enforce_sorted=False)
    fused_out, h_n = model.rnn(packed)
    fused_out, _ = torch.nn.utils.rnn.pad_packed_sequence(fused_out, batch_first=True)
    h_n = h_n[0] if cell == "lstm" else h_n  # (layers*D, B, H)
    real = (torch.arange(9)[None, :] < lengths[:, None])[..., None]
    torch.testing.assert_close(outputs[-1] * real, fused_out * real, atol=1e-5, rtol=0)
    for k, state in enumerate(final_states(model, outputs, lengths)):
        expected = h_n.view(3, 2 if bidirectional else 1, 3, 8)[k].permute(1, 0, 2).reshape(3, -1)
        torch.testing.assert_close(state, expected, atol=1e-5, rtol=0)
    assert not model.training


def test_rerun_differs_when_a_layer_weight_is_changed():
    """The equality above is not vacuous: a copy of the wrong weights is caught."""
    from stacked_rnn.diagnostics import unfuse

    rnn = torch.nn.GRU(4, 5, num_layers=2, batch_first=True)
    layers = unfuse(rnn)
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(layers[1](layers[0](x)[0])[0], rnn(x)[0], atol=1e-6, rtol=0)
    with torch.no_grad():
        layers[1].weight_hh_l0.add_(0.1)
    assert (layers[1](layers[0](x)[0])[0] - rnn(x)[0]).abs().max() > 1e-3


def test_depth_time_grid_cli(tiny_archive, tmp_path):
    from stacked_rnn.diagnostics import grid_main

    train.run(compose_config(tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", "model.layers=3",
                                            "trainer.max_epochs=1", "data.limit=40")))
    text = "great movie word1 word2 awful neverseen"
    assert grid_main([f"ckpt={tmp_path / 'run'}", f"text={text}"]) == 0
    assert (tmp_path / "run" / "depth_time_norm.png").stat().st_size > 1000
    assert grid_main([f"ckpt={tmp_path / 'run'}", f"text={text}", "value=readout", f"out={tmp_path}/r.png"]) == 0
    assert (tmp_path / "r.png").is_file()
    assert grid_main([f"ckpt={tmp_path / 'run'}", f"text={text}", "value=colour"]) == 2
    assert grid_main([f"ckpt={tmp_path / 'run'}"]) == 2


def test_depth_time_grid_values():
    from stacked_rnn.diagnostics import depth_time_grid
    from stacked_rnn.model import StackedRNNClassifier

    model = StackedRNNClassifier(30, cell="lstm", layers=4, units=6, embed_dim=5).eval()
    ids = torch.randint(2, 30, (11,))
    norms = depth_time_grid(model, ids, "norm")
    assert norms.shape == (4, 11) and (norms >= 0).all()
    readout = depth_time_grid(model, ids, "readout")
    torch.testing.assert_close(readout[-1, -1], torch.sigmoid(model(ids[None], torch.tensor([11])))[0])
