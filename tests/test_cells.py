"""minGRU / minLSTM (stacked_rnn.cells): both scans against a step-by-step loop, the modules against a reference
written here from the paper's equations, nn.GRU's interface, parameter counts, and training at T = 4096."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from stacked_rnn.cells import (MINIMAL_CELLS, SCANS, ChunkedLinearScan, ChunkedScan, MinGRU, MinLSTM, linear_scan,
                               reference_scan)
from stacked_rnn.cells.scan import SCAN_FUNCTIONS

CELLS = [MinGRU, MinLSTM]
WEIGHT_RE = re.compile(r"weight_(ih|hh)_l(\d+)(_reverse)?$")  # stacked_rnn.diagnostics's gradient-flow pattern


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < lengths[:, None]).double()[..., None]  # (B, T, 1)


def values_and_grads(fn, inputs, grad_out):
    """fn's output and the gradients of <output, grad_out> with respect to each input that is not None."""
    leaves = [None if v is None else v.detach().clone().requires_grad_() for v in inputs]
    out = fn(*leaves)
    (out * grad_out).sum().backward()
    return [out.detach()] + [v.grad for v in leaves if v is not None]


# ----------------------------------------------------------------------------------------------
# Scans


@pytest.mark.parametrize("method", SCANS)
@pytest.mark.parametrize("blocks", [2, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_scans_match_the_step_loop_in_float64_with_padding_and_initial_state(method, blocks, reverse):
    torch.manual_seed(0)
    B, H = 3, 4
    for T in (1, 23):  # 23: chunks of 4, 5 whole chunks and 3 steps left over
        pre = torch.randn(B, T, blocks * H, dtype=torch.float64) * 3
        h0 = torch.randn(B, H, dtype=torch.float64)
        mask = padding_mask(torch.tensor([T, max(1, T - 9), max(1, T // 2)]), T)
        grad_out = torch.randn(B, T, H, dtype=torch.float64) * mask
        for initial in (None, h0):
            ours = values_and_grads(lambda p, h: SCAN_FUNCTIONS[method](p, h, mask, reverse, blocks), (pre, initial),
                                    grad_out)
            ref = values_and_grads(lambda p, h: reference_scan(p, h, mask, reverse, blocks), (pre, initial), grad_out)
            for a, b in zip(ours, ref):
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("blocks", [2, 3])
def test_fused_input_map_and_chunked_scan_match_the_loop(blocks):
    """linear_scan(x, W, b) = the loop on F.linear(x, W, b), gradients for x, W, b and h0 included."""
    torch.manual_seed(1)
    B, T, F_in, H = 3, 30, 5, 4
    x, h0 = torch.randn(B, T, F_in, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w, b = torch.randn(blocks * H, F_in, dtype=torch.float64), torch.randn(blocks * H, dtype=torch.float64)
    mask = padding_mask(torch.tensor([30, 7, 19]), T)
    grad_out = torch.randn(B, T, H, dtype=torch.float64) * mask
    for reverse in (False, True):
        ours = values_and_grads(lambda *v: linear_scan(*v, mask=mask, reverse=reverse, blocks=blocks),
                                (x, w, b, h0), grad_out)
        ref = values_and_grads(lambda x, w, b, h0: reference_scan(F.linear(x, w, b), h0, mask, reverse, blocks),
                               (x, w, b, h0), grad_out)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("blocks", [2, 3])
def test_custom_backward_passes_gradcheck(blocks):
    torch.manual_seed(2)
    B, T, H = 2, 11, 3
    mask = padding_mask(torch.tensor([11, 6]), T)
    pre = torch.randn(B, T, blocks * H, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, T, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(blocks * H, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(blocks * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda p, h: ChunkedScan.apply(p, h, mask, reverse, blocks), (pre, h0))
        assert torch.autograd.gradcheck(lambda x, w, b, h: ChunkedLinearScan.apply(x, w, b, h, mask, reverse, blocks),
                                        (x, w, b, h0))


# ----------------------------------------------------------------------------------------------
# Modules against the paper's equations


def g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def reference_step(cell, weight, bias, x_t, h):
    """One step of the paper's cell, written out: x_t (F,), h (H,) -> h (H,)."""
    gates = weight @ x_t + bias
    if cell is MinGRU:
        z_pre, h_pre = gates.chunk(2)
        z = torch.sigmoid(z_pre)
        return (1 - z) * h + z * g(h_pre)
    f_pre, i_pre, h_pre = gates.chunk(3)
    f, i = torch.sigmoid(f_pre), torch.sigmoid(i_pre)
    return f / (f + i) * h + i / (f + i) * g(h_pre)


def reference_stack(rnn, x, hx):
    """Output (T, D*H) and h_n (L*D, H) of one unpadded sequence x (T, F), one step at a time."""
    h_n = []
    for layer in range(rnn.num_layers):
        outs = []
        for d, suffix in enumerate(("", "_reverse")[:rnn.directions]):
            weight, bias = getattr(rnn, f"weight_ih_l{layer}{suffix}"), getattr(rnn, f"bias_ih_l{layer}{suffix}")
            h, out = hx[layer * rnn.directions + d], [None] * len(x)
            for t in (reversed(range(len(x))) if d else range(len(x))):
                out[t] = h = reference_step(type(rnn), weight, bias, x[t], h)
            outs.append(torch.stack(out))
            h_n.append(h)
        x = torch.cat(outs, dim=-1)
    return x, torch.stack(h_n)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("cell", CELLS)
def test_packed_bidirectional_stack_matches_the_equations(cell, scan):
    torch.manual_seed(3)
    rnn = cell(5, 4, num_layers=2, bidirectional=True, batch_first=True, scan=scan).double()
    x, lengths = torch.randn(3, 9, 5, dtype=torch.float64), torch.tensor([6, 9, 2])
    hx = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    out, h_n = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), hx)
    out, out_lengths = pad_packed_sequence(out, batch_first=True)
    assert out_lengths.tolist() == lengths.tolist() and h_n.shape == (4, 3, 4)
    loss = out.sum() + h_n.square().sum()
    grads = torch.autograd.grad(loss, [hx, *rnn.parameters()])
    ref_loss = 0
    for b in range(3):
        ref_out, ref_h_n = reference_stack(rnn, x[b, :lengths[b]], hx[:, b])
        torch.testing.assert_close(out[b, :lengths[b]], ref_out, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h_n[:, b], ref_h_n, rtol=1e-10, atol=1e-10)
        ref_loss = ref_loss + ref_out.sum() + ref_h_n.square().sum()
    for ours, ref in zip(grads, torch.autograd.grad(ref_loss, [hx, *rnn.parameters()])):
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_h_n_is_the_output_at_each_sequences_real_last_step(cell):
    torch.manual_seed(4)
    for bidirectional in (False, True):
        rnn = cell(3, 4, bidirectional=bidirectional, batch_first=True)
        x, lengths = torch.randn(4, 8, 3), torch.tensor([8, 3, 5, 1])
        out, h_n = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, batch_first=True)
        assert torch.equal(h_n[0], out[torch.arange(4), lengths - 1, :4])
        if bidirectional:
            assert torch.equal(h_n[1], out[:, 0, 4:])
        order = lengths.argsort(descending=True)  # packed already sorted: no sorted_indices
        sorted_out, sorted_h_n = rnn(pack_padded_sequence(x[order], lengths[order], batch_first=True))
        assert sorted_out.sorted_indices is None and torch.equal(sorted_h_n, h_n[:, order])
        assert torch.equal(pad_packed_sequence(sorted_out, batch_first=True)[0], out[order])
        plain_out, plain_h_n = rnn(x)  # a tensor: every sequence runs all 8 steps
        assert torch.equal(plain_h_n[0], plain_out[:, -1, :4])


# ----------------------------------------------------------------------------------------------
# nn.GRU's interface


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_names_and_parameter_count_follow_nn_gru(cell):
    for layers, bias, bidirectional in [(1, True, False), (3, True, True), (2, False, True)]:
        rnn = cell(7, 5, num_layers=layers, bias=bias, bidirectional=bidirectional)
        gru = nn.GRU(7, 5, num_layers=layers, bias=bias, bidirectional=bidirectional)
        x, hx = torch.randn(6, 2, 7), torch.randn(layers * (1 + bidirectional), 2, 5)  # (T, B, F): batch_first=False
        (out, h_n), (gru_out, gru_h_n) = rnn(x, hx), gru(x, hx)
        assert out.shape == gru_out.shape and h_n.shape == gru_h_n.shape
        unbatched_out, unbatched_h_n = rnn(x[:, 0], hx[:, 0])
        torch.testing.assert_close(unbatched_out, out[:, 0])
        torch.testing.assert_close(unbatched_h_n, h_n[:, 0])
        names = {n for n, _ in rnn.named_parameters()}
        assert names == {n for n in dict(gru.named_parameters()) if "_ih_" in n}  # nn.GRU's names, no weight_hh
        assert {n for n in names if WEIGHT_RE.match(n)} == {n for n in names if n.startswith("weight")}
        for name, p in rnn.named_parameters():
            assert p.shape[0] == cell.BLOCKS * 5 and p.shape[1:] == getattr(gru, name).shape[1:]
        width = 5 * (1 + bidirectional)
        count = sum(cell.layer_params(7 if k == 0 else width, 5, bias, bidirectional) for k in range(layers))
        assert count == sum(p.numel() for p in rnn.parameters())
    assert MINIMAL_CELLS == {"mingru": MinGRU, "minlstm": MinLSTM}


def test_layers_rebuilt_one_at_a_time_from_the_stacks_weights_give_the_same_outputs():
    """What stacked_rnn.diagnostics.unfuse does: type(rnn)(in, hidden, ...) loading weight_ih_l{k} as _l0."""
    torch.manual_seed(5)
    rnn = MinLSTM(3, 4, num_layers=3, batch_first=True, bidirectional=True, dropout=0.3).eval()
    x = torch.randn(2, 7, 3)
    inp = x
    for k in range(3):
        layer = type(rnn)(3 if k == 0 else 8, 4, bias=rnn.bias, batch_first=True, bidirectional=True)
        layer.load_state_dict({n: getattr(rnn, n.replace("_l0", f"_l{k}")) for n, _ in layer.named_parameters()})
        inp = layer(inp)[0]
    torch.testing.assert_close(inp, rnn(x)[0])
    rnn.train()
    assert not torch.equal(rnn(x)[0], rnn(x)[0])  # dropout between layers in training mode only


def test_a_bad_scan_is_a_clear_error():
    with pytest.raises(ValueError, match=r"scan='fast'.*'chunked', 'log'"):
        MinGRU(3, 4, scan="fast")


def test_autocast_runs_the_scan_in_float32():
    rnn = MinGRU(3, 4, batch_first=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = rnn(torch.randn(2, 5, 3))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# Long sequences


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("cell", CELLS)
def test_training_at_T_4096_keeps_gradients_finite(cell, scan):
    torch.manual_seed(6)
    embedding, rnn, head = nn.Embedding(50, 4), cell(4, 4, scan=scan, batch_first=True), nn.Linear(4, 1)
    params = [*embedding.parameters(), *rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    ids, labels = torch.randint(0, 50, (2, 4096)), torch.tensor([0.0, 1.0])
    for _ in range(3):
        out, _ = rnn(embedding(ids))
        loss = F.binary_cross_entropy_with_logits(head(out[:, -1]).squeeze(-1), labels)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in params)
        assert rnn.weight_ih_l0.grad.abs().sum() > 0
        optimizer.step()


def test_work_buffers_made_under_inference_mode_do_not_break_training():
    """Lightning validates under torch.inference_mode before training: buffers made then must not be reused after."""
    layer = MinGRU(4, 6, num_layers=2, batch_first=True)
    x = torch.randn(3, 20, 4)
    with torch.inference_mode():
        layer(x)
    layer(x)[0].sum().backward()  # raised "Inplace update to inference tensor outside InferenceMode"
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
