"""StackedRNNClassifier: shapes for every cell, pooling and direction; the real "last" state; init."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from stacked_rnn.model import CELL_MODULES, CELLS, POOLS, StackedRNNClassifier, stack_params, units_for_budget


def batch(vocab: int = 50):
    """Three right-padded reviews of lengths 7, 4 and 2."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (3, 7), generator=g)
    lengths = torch.tensor([7, 4, 2])
    ids[1, 4:] = 0
    ids[2, 2:] = 0
    return ids, lengths


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes_for_every_cell_pool_and_direction(cell, pool, bidirectional):
    model = StackedRNNClassifier(50, cell=cell, layers=3, units=8, embed_dim=6, pool=pool, bidirectional=bidirectional)
    assert isinstance(model.rnn, CELL_MODULES[cell]) and model.rnn.num_layers == 3
    ids, lengths = batch()
    assert model.encode(ids, lengths).shape == (3, 16 if bidirectional else 8)
    logits = model(ids, lengths)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_changes_a_review_s_features(cell, pool, bidirectional):
    """A padded batch gives each review exactly the features it gets alone: "last" is the real last token."""
    torch.manual_seed(0)
    model = StackedRNNClassifier(50, cell=cell, layers=2, units=8, embed_dim=6, pool=pool,
                                 bidirectional=bidirectional, dropout=0.0, head_dropout=0.0).eval()
    ids, lengths = batch()
    for pack in ("auto", "always"):
        model.hparams.pack = pack
        together = model.encode(ids, lengths)
        alone = torch.cat([model.encode(ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


def test_last_pool_reads_the_top_layer_final_state():
    torch.manual_seed(0)
    model = StackedRNNClassifier(50, cell="gru", layers=2, units=8, embed_dim=6, pool="last").eval()
    ids, lengths = batch()
    packed = torch.nn.utils.rnn.pack_padded_sequence(model.embedding(ids), lengths, batch_first=True,
                                                     enforce_sorted=False)
    _, h_n = model.rnn(packed)  # (layers, B, H): the fused module's own final states
    torch.testing.assert_close(model.encode(ids, lengths), h_n[-1])


def test_padded_cpu_path_is_used_only_where_it_is_exact():
    ids, _ = batch()
    assert not StackedRNNClassifier(50).use_packing(ids)
    assert StackedRNNClassifier(50, bidirectional=True).use_packing(ids)
    assert StackedRNNClassifier(50, pack="always").use_packing(ids)


def test_keras_init_scales():
    model = StackedRNNClassifier(1000, cell="lstm", layers=2, units=16, embed_dim=32, init="keras")
    assert model.embedding.weight.abs().max() <= 0.05
    w_hh = model.rnn.weight_hh_l0.detach()
    for block in w_hh.chunk(4):  # each gate's recurrent block is orthogonal
        torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    assert model.rnn.bias_ih_l0.detach().chunk(4)[1].eq(1).all()  # forget gate bias 1
    assert model.rnn.bias_hh_l0.detach().eq(0).all()
    default = StackedRNNClassifier(1000, init="torch")
    assert default.embedding.weight.std() > 0.5  # PyTorch's N(0, 1) embeddings


@pytest.mark.parametrize("cell, gates", [("rnn", 1), ("lstm", 4)])
def test_identity_init_is_keras_init_with_identity_recurrent_blocks(cell, gates):
    model = StackedRNNClassifier(1000, cell=cell, layers=2, units=6, embed_dim=8, init="identity")
    for layer in (0, 1):
        for block in getattr(model.rnn, f"weight_hh_l{layer}").detach().chunk(gates):  # (H, H) per gate
            assert torch.equal(block, torch.eye(6))
    assert model.embedding.weight.abs().max() <= 0.05  # the rest is Keras's init
    assert not model.rnn.bias_hh_l0.requires_grad
    if cell == "rnn":  # a state with no input is carried through one step unrotated: h1 = tanh(I h0)
        h0 = torch.full((2, 1, 6), 0.3)  # (layers, B, H)
        _, h1 = model.rnn(torch.zeros(1, 1, 8), h0)
        torch.testing.assert_close(h1[0], torch.tanh(h0[0]))


def test_dropout_only_between_layers():
    assert StackedRNNClassifier(50, layers=1, dropout=0.5).rnn.dropout == 0.0
    assert StackedRNNClassifier(50, layers=2, dropout=0.5).rnn.dropout == 0.5


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_residual_on_and_off_give_the_same_shapes(cell, bidirectional):
    from stacked_rnn.diagnostics import layer_outputs, layer_weights

    ids, lengths = batch()
    plain = StackedRNNClassifier(50, cell=cell, layers=4, units=8, embed_dim=6, bidirectional=bidirectional).eval()
    residual = StackedRNNClassifier(50, cell=cell, layers=4, units=8, embed_dim=6, bidirectional=bidirectional,
                                    residual=True).eval()
    assert plain.stack is None and residual.rnn is None and len(residual.stack) == 4
    assert residual(ids, lengths).shape == plain(ids, lengths).shape == (3,)
    assert residual.encode(ids, lengths).shape == plain.encode(ids, lengths).shape
    assert residual.num_params == plain.num_params  # the same weights, only the wiring differs
    assert set(layer_weights(residual)) == set(layer_weights(plain))  # gradient flow sees the same names
    outputs = layer_outputs(residual, ids, lengths)
    torch.testing.assert_close(outputs[-1], residual.run_rnn(ids, lengths))


def test_residual_adds_each_layer_s_input_from_the_second_layer_on():
    torch.manual_seed(0)
    model = StackedRNNClassifier(50, cell="rnn", layers=3, units=8, embed_dim=6, residual=True, dropout=0.0).eval()
    ids, lengths = batch()
    x = model.embedding(ids)
    h0 = model.stack[0](x)[0]  # (B, T, H): the first layer changes width, so no skip
    h1 = h0 + model.stack[1](h0)[0]
    h2 = h1 + model.stack[2](h1)[0]
    torch.testing.assert_close(model.run_rnn(ids, lengths), h2)


def test_real_valued_inputs_replace_the_embedding():
    model = StackedRNNClassifier(0, cell="lstm", layers=2, units=8, input_dim=2, task="regress")
    x = torch.rand(4, 10, 2)
    assert isinstance(model.embedding, torch.nn.Identity) and model.rnn.input_size == 2
    assert model(x, torch.full((4,), 10)).shape == (4,)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packing_gives_the_same_features_whatever_the_batch_order(bidirectional):
    """Longest-first batches pack without reordering; any other order is reordered and gives the same rows."""
    torch.manual_seed(0)
    model = StackedRNNClassifier(50, layers=2, units=8, embed_dim=6, bidirectional=bidirectional, pack="always",
                                 pool="mean").eval()
    ids, lengths = batch()  # longest first
    shuffled = torch.tensor([2, 0, 1])
    torch.testing.assert_close(model.encode(ids, lengths)[shuffled], model.encode(ids[shuffled], lengths[shuffled]))


def count_syncs(step) -> int:
    """How many synchronising CUDA calls `step()` makes (torch's sync debug mode, in warn mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_cuda_training_step_waits_for_the_gpu_no_more_than_the_bare_rnn(bidirectional):
    """A packed training step (forward, backward, clipping, fused Adam) makes no more host syncs than a bare packed
    nn.GRU forward and backward on the same batch. On an H200 (torch 2.11, cuDNN 9.19) the packed cuDNN call
    itself synchronises, so 'no sync at all' is not reachable; the package must add none."""
    from stacked_rnn.tasks.batches import collate, to_device_keeping_lengths

    model = StackedRNNClassifier(50, layers=2, units=16, embed_dim=8, bidirectional=bidirectional).cuda()
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    reviews = [(torch.randint(2, 50, (n,)).numpy(), n % 2) for n in (5, 9, 3, 7)]
    ids, lengths, labels = collate(reviews, longest_first=True)
    ids_d, lengths_d, labels_d = to_device_keeping_lengths((ids.pin_memory(), lengths.pin_memory(),
                                                            labels.pin_memory()), torch.device("cuda"))
    bare = torch.nn.GRU(8, 16, num_layers=2, batch_first=True, bidirectional=bidirectional).cuda()
    x = torch.randn(4, int(lengths.max()), 8, device="cuda")

    def bare_step():
        packed = pack_padded_sequence(x, lengths_d, batch_first=True)
        bare(packed)[0].data.sum().backward()

    def package_step():
        loss = model.loss(model(ids_d, lengths_d), labels_d)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    package_step()  # the first step allocates optimizer state
    bare_step()
    assert lengths_d.device.type == "cpu"  # lengths never make a round trip to the GPU
    assert count_syncs(package_step) <= count_syncs(bare_step)


@pytest.mark.parametrize("cell, frozen", [("rnn", True), ("lstm", True), ("gru", False)])
def test_keras_init_keeps_one_bias_per_gate_like_keras(cell, frozen):
    """Keras's SimpleRNN and LSTM have one bias per gate, its GRU (reset_after) two. PyTorch's b_ih and b_hh get
    identical gradients, so training both would move the bias twice as fast under Adam."""
    model = StackedRNNClassifier(50, cell=cell, layers=2, units=8, init="keras")
    biases_hh = [p for n, p in model.rnn.named_parameters() if n.startswith("bias_hh")]
    assert len(biases_hh) == 2 and all(p.requires_grad != frozen for p in biases_hh)
    assert all(p.abs().sum() == 0 for p in biases_hh)
    ids, lengths = torch.randint(1, 50, (3, 7)), torch.tensor([7, 5, 2])
    model(ids, lengths).sum().backward()
    assert all((p.grad is None) == frozen for p in biases_hh)
    torch_init = StackedRNNClassifier(50, cell=cell, init="torch")
    assert all(p.requires_grad for p in torch_init.parameters())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_param_budget_units_hit_the_budget_within_one_unit_s_worth(cell, bidirectional):
    for layers in (1, 2, 3, 4):
        for budget in (3_000, 12_700, 50_000):
            units = units_for_budget(budget, cell, layers, 32, bidirectional)
            count = stack_params(cell, layers, units, 32, bidirectional)
            below = stack_params(cell, layers, units - 1, 32, bidirectional) if units > 1 else None
            above = stack_params(cell, layers, units + 1, 32, bidirectional)
            assert abs(count - budget) <= abs(above - budget) and (below is None or abs(count - budget) <= abs(below - budget))
            assert abs(count - budget) <= max(above - count, count - (below or count))  # within one unit's worth
        model = StackedRNNClassifier(100, cell=cell, layers=layers, embed_dim=32, bidirectional=bidirectional,
                                     param_budget=12_700)
        assert model.hparams.units == units_for_budget(12_700, cell, layers, 32, bidirectional)
        assert model.stack_params == model.num_params - 100 * 32  # the formula counts what the module holds
        assert model.stack_params == stack_params(cell, layers, model.hparams.units, 32, bidirectional)


def test_param_budget_by_hand_and_too_small_a_budget():
    # rnn x 2, 4-d inputs, one direction: (4u + u^2 + 2u) + (2u^2 + 2u) + (u + 1) = 3u^2 + 9u + 1
    assert [stack_params("rnn", 2, u, 4) for u in (1, 2, 3)] == [13, 31, 55]
    assert units_for_budget(40, "rnn", 2, 4) == 2 and units_for_budget(44, "rnn", 2, 4) == 3  # 40: 31 nearer than 55
    with pytest.raises(ValueError, match=r"param_budget=12 is too small: rnn x 2 layers with 4-d inputs needs 13"):
        units_for_budget(12, "rnn", 2, 4)
