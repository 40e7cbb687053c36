"""The CUDA fast paths, checked on the CPU (issue 25): a unidirectional stack run padded (model.pack=never) computes
what the packed stack computes; batches cut on the device (data.on_device=true) are the loader's batches; sweep jobs
sharing a GPU share the host's cores. The tests named test_cuda_* need a GPU and are skipped without one
(benchmarks/gpu_check.sh runs them on a lent GPU)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import compose_config, signal_overrides, tiny_overrides, write_imdb_archive
from stacked_rnn import train
from stacked_rnn.diagnostics import final_states, layer_outputs
from stacked_rnn.model import StackedRNNClassifier
from stacked_rnn.tasks.batches import DeviceBatches, DeviceTokens, to_device_keeping_lengths
from stacked_rnn.tasks.imdb import IMDBDataModule

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def unequal_batch(vocab: int = 50, order=(0, 1, 2, 3)):
    """Four right-padded reviews of lengths 9, 6, 3 and 1 (in `order`), padding id 0 after each."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 6, 3, 1])[list(order)]
    ids = torch.randint(2, vocab, (4, 9), generator=g)
    ids[torch.arange(9)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def real_steps(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The outputs (B, T, H) at real steps only, flattened to (real steps, H)."""
    return out[torch.arange(out.shape[1])[None, :] < lengths[:, None]]


def two_ways(cell: str, residual: bool, **kw) -> tuple[StackedRNNClassifier, StackedRNNClassifier]:
    """The same model (same weights), packed (pack=always) and padded (pack=never), without dropout."""
    torch.manual_seed(0)
    packed = StackedRNNClassifier(50, cell=cell, layers=3, units=8, embed_dim=6, pack="always", residual=residual,
                                  dropout=0.0, embed_dropout=0.0, head_dropout=0.0, **kw)
    padded = StackedRNNClassifier(50, cell=cell, layers=3, units=8, embed_dim=6, pack="never", residual=residual,
                                  dropout=0.0, embed_dropout=0.0, head_dropout=0.0, **kw)
    padded.load_state_dict(packed.state_dict())
    return packed, padded


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("residual", [False, True], ids=["fused", "layer_by_layer"])
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 0, 3, 1)], ids=["longest_first", "any_order"])
def test_padded_stack_computes_what_the_packed_stack_computes(cell, residual, order):
    """Logits, every layer's states at real steps, every layer's last state (the fused module's own packed h_n) and
    the weights' gradients: pack=never equals pack=always for reviews of unequal lengths. Padded steps come after a
    review's last real token, so a unidirectional stack never reads them."""
    packed, padded = two_ways(cell, residual)
    ids, lengths = unequal_batch(order=order)
    assert padded.use_packing(ids) is False and packed.use_packing(ids) is True

    torch.testing.assert_close(padded(ids, lengths), packed(ids, lengths), atol=1e-6, rtol=1e-5)
    layers_padded, layers_packed = layer_outputs(padded, ids, lengths), layer_outputs(packed, ids, lengths)
    assert len(layers_padded) == len(layers_packed) == 3
    for out_padded, out_packed in zip(layers_padded, layers_packed):
        torch.testing.assert_close(real_steps(out_padded, lengths), real_steps(out_packed, lengths),
                                   atol=1e-6, rtol=1e-5)
    last_padded = final_states(padded, layers_padded, lengths)
    for a, b in zip(last_padded, final_states(packed, layers_packed, lengths)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(padded.encode(ids, lengths), last_padded[-1], atol=1e-6, rtol=1e-5)
    if not residual:  # the fused module's own h_n after a packed run: each layer's state at the real last token
        x = packed.embedding(ids)
        _, h_n = packed.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        h_n = h_n[0] if cell == "lstm" else h_n  # (layers, B, H)
        for layer, state in enumerate(last_padded):
            torch.testing.assert_close(state, h_n[layer], atol=1e-6, rtol=1e-5)

    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    for model in (padded, packed):
        model.zero_grad()
        model.loss(model(ids, lengths), labels).backward()
    for (name, a), (_, b) in zip(padded.named_parameters(), packed.named_parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_padded_pooling_reads_only_real_steps(pool):
    packed, padded = two_ways("gru", residual=False, pool=pool)
    ids, lengths = unequal_batch()
    torch.testing.assert_close(padded(ids, lengths), packed(ids, lengths), atol=1e-6, rtol=1e-5)


def test_pack_chooses_per_device_and_a_bidirectional_stack_always_packs():
    """pack=auto: padded on CPU, packed on CUDA (the CUDA default is unchanged: no GPU measurement says otherwise);
    pack=never: padded everywhere; a bidirectional stack packs (pack=never is refused for it: its backward direction
    would start on the padding)."""
    cpu_ids, cuda_ids = torch.zeros(2, 3, dtype=torch.long), types.SimpleNamespace(is_cuda=True)  # only is_cuda is read
    choices = {pack: StackedRNNClassifier(50, pack=pack) for pack in ("auto", "always", "never")}
    assert {p: m.use_packing(cpu_ids) for p, m in choices.items()} == {"auto": False, "always": True, "never": False}
    assert {p: m.use_packing(cuda_ids) for p, m in choices.items()} == {"auto": True, "always": True, "never": False}
    for pack in ("auto", "always"):
        model = StackedRNNClassifier(50, pack=pack, bidirectional=True)
        assert model.use_packing(cpu_ids) and model.use_packing(cuda_ids)
    with pytest.raises(ValueError, match="pack='never' with bidirectional=True: the backward direction would start "
                                         "on each review's padding"):
        StackedRNNClassifier(50, pack="never", bidirectional=True)
    cfg = compose_config(["output_dir=/tmp/x", "model.bidirectional=true", "model.pack=never"])
    with pytest.raises(train.ConfigError, match="model.pack='never' is not allowed with model.bidirectional=true"):
        train.check_config(cfg)


# --- data.on_device: the loader's batches, cut on the device -------------------------------------------------------

@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_imdb_archive(tmp_path_factory.mktemp("imdb") / "a.tar.gz", per_class=60)


def datamodule(archive, cache, **kw) -> IMDBDataModule:
    kw = dict(archive=str(archive), cache_dir=str(cache), val_size=20, vocab_size=100, max_len=20, batch_size=16,
              eval_batch_size=24, progress=False, order_seed=3) | kw
    dm = IMDBDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    return dm


def epoch(loader, number: int, seed: int = 0) -> list:
    """One pass as Lightning makes it: set_epoch on the loader's sampler, then iterate (torch seeded alike, for the
    shuffling of data.bucket=false)."""
    for sampler in {id(s): s for s in (loader.sampler, getattr(loader, "batch_sampler", None))}.values():
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(number)
    torch.manual_seed(seed + number)
    return list(loader)


def assert_same_batches(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for name, x, y in zip(("ids", "lengths", "labels"), a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device, (i, name, x, y)
            assert torch.equal(x, y), (i, name)


@pytest.mark.parametrize("settings", [{}, {"bucket": False}, {"fixed_length": True}, {"truncate": "tail"}],
                         ids=["bucketed", "shuffled", "fixed_length", "truncate_tail"])
def test_on_device_batches_are_the_loader_s_batches(archive, tmp_path, settings):
    """Same ids, lengths, labels and order for two epochs of training and for the evaluation loaders; lengths on
    the CPU (where packing reads them), ids and labels on the trainer's device (here the CPU: no trainer)."""
    host, device = (datamodule(archive, tmp_path, on_device=flag, **settings) for flag in (False, True))
    train_host, train_device = host.train_dataloader(), device.train_dataloader()
    assert isinstance(train_device, DeviceBatches) and len(train_device) == len(train_host) == 7
    epochs = [epoch(train_device, n) for n in (0, 1)]
    for n, batches in enumerate(epochs):
        assert_same_batches(batches, epoch(train_host, n))
    assert [b[0].sum().item() for b in epochs[0]] != [b[0].sum().item() for b in epochs[1]]  # a new order each epoch
    for split in ("val", "test"):
        loader = getattr(device, f"{split}_dataloader")()
        assert_same_batches(list(loader), list(getattr(host, f"{split}_dataloader")()))
    assert set(device.device_tokens) == {"train", "val", "test"}  # each split moved once


def test_on_device_batches_resume_mid_epoch_with_the_batches_left(archive, tmp_path):
    """skip_batches(n) (ExactResume, on a resume mid-epoch) leaves out the epoch's first n batches of the on-device
    batches as of the loader's, and only in that epoch."""
    host, device = (datamodule(archive, tmp_path, on_device=flag) for flag in (False, True))
    for dm in (host, device):
        dm.skip_batches(3)
    train_host, train_device = host.train_dataloader(), device.train_dataloader()
    resumed = epoch(train_device, 1)
    assert len(resumed) == 4
    assert_same_batches(resumed, epoch(train_host, 1))
    assert_same_batches(resumed, epoch(device.train_dataloader(), 1)[3:])
    assert_same_batches(epoch(train_device, 2), epoch(train_host, 2))  # the next epoch is whole again


def test_device_tokens_cut_right_padded_rows():
    from stacked_rnn.tasks.batches import ReviewDataset

    dataset = ReviewDataset([np.array([5, 6, 7]), np.array([8]), np.array([9, 10])], np.array([1, 0, 1]))
    tokens = DeviceTokens(dataset, "cpu")
    ids = tokens.cut(tokens.offsets[[0, 2, 1]], tokens.lengths[[0, 2, 1]], width=4)
    assert ids.dtype == torch.int64 and ids.tolist() == [[5, 6, 7, 0], [9, 10, 0, 0], [8, 0, 0, 0]]


def test_on_device_refuses_worker_processes(archive, tmp_path):
    from stacked_rnn.tasks.imdb_corpus import DataError

    with pytest.raises(DataError, match="data.on_device=true .* no worker processes, so data.num_workers=2 must be 0"):
        IMDBDataModule(archive=str(archive), on_device=True, num_workers=2)


DROPOUTS = ("data.limit=48", "model.dropout=0.3", "model.embed_dropout=0.2", "model.head_dropout=0.2")


def test_training_on_device_equals_training_from_the_loader_also_resumed_mid_epoch(archive, tmp_path):
    """Two epochs through the package's Trainer with data.on_device=true give exactly the history and test accuracy
    of data.on_device=false, also when stopped by Ctrl-C mid-epoch and resumed (ckpt_path=last)."""
    def run(name, *extra):
        return train.run(compose_config(tiny_overrides(archive, tmp_path / "cache", tmp_path / name, *DROPOUTS,
                                                       *extra)))

    host = run("host")
    device = run("device", "data.on_device=true")
    assert device["history"] == host["history"] and device["test_acc"] == host["test_acc"]
    with pytest.raises(train.Interrupted, match="SIGINT at epoch 0, step 3"):
        run("cut", "data.on_device=true", *signal_overrides(2, at_step=3))
    resumed = run("cut", "data.on_device=true", "ckpt_path=last")
    assert resumed["history"] == host["history"] and resumed["test_acc"] == host["test_acc"]


# --- several jobs on one GPU ---------------------------------------------------------------------------------------

def test_gpu_shared_launcher_runs_n_jobs_with_joblib():
    from hydra import compose, initialize_config_module

    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=gpu_shared"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 4


@pytest.mark.parametrize("accelerator", ["gpu", "cpu"])
def test_each_sweep_job_gets_its_share_of_the_host_cores_on_gpu_too(monkeypatch, accelerator):
    """n_jobs jobs at once, each with cores // n_jobs torch threads: on a 16-core host, 4 jobs get 4 threads each,
    GPU jobs as CPU jobs (a GPU job's data, loop and kernel launches run on the CPU)."""
    hydra = types.SimpleNamespace(launcher={"n_jobs": 4}, job=types.SimpleNamespace(num=5))
    monkeypatch.setattr(train.HydraConfig, "get", staticmethod(lambda: hydra))
    monkeypatch.setattr(train.os, "cpu_count", lambda: 16)
    threads = []
    monkeypatch.setattr(train.torch, "set_num_threads", threads.append)
    cfg = compose_config(["output_dir=/tmp/x", f"trainer.accelerator={accelerator}"])
    train.place_sweep_job(cfg)
    assert threads == [4]


# --- on a GPU (skipped here) ---------------------------------------------------------------------------------------

def count_syncs(step) -> int:
    """How many synchronising CUDA calls `step()` makes (torch's sync debug mode, in warn mode)."""
    import warnings

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@CUDA
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cuda_padded_stack_computes_what_the_packed_stack_computes(cell):
    """On cuDNN too (float32 without TF32: the two paths may pick different kernels)."""
    packed, padded = (m.cuda() for m in two_ways(cell, residual=False))
    ids, lengths = unequal_batch()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(padded(ids.cuda(), lengths), packed(ids.cuda(), lengths), atol=1e-5, rtol=1e-4)


@CUDA
@pytest.mark.parametrize("units", [16, 128])
def test_cuda_padded_training_step_waits_for_the_gpu_no_more_than_a_bare_padded_rnn(units):
    """A padded step (pack=never; lengths pinned on the CPU as the DataModules serve them, or already on the device)
    makes no more host syncs than a bare padded nn.GRU forward and backward: the last state is gathered on the
    device, and no length is read on the host."""
    model = StackedRNNClassifier(50, layers=2, units=units, embed_dim=8, pack="never").cuda()
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    ids, lengths = unequal_batch()
    ids, labels = ids.cuda(), torch.tensor([1.0, 0.0, 1.0, 0.0], device="cuda")
    bare = torch.nn.GRU(8, units, num_layers=2, batch_first=True).cuda()
    x = torch.randn(4, 9, 8, device="cuda")

    def bare_step():
        bare(x)[0].sum().backward()

    def package_step(lengths):
        loss = model.loss(model(ids, lengths), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    for where in (lengths.pin_memory(), lengths.cuda()):
        package_step(where)  # the first step allocates optimizer state
        bare_step()
        assert count_syncs(lambda: package_step(where)) <= count_syncs(bare_step)


@CUDA
def test_cuda_on_device_batches_equal_the_loader_s_and_are_cut_without_syncs(tmp_path):
    from stacked_rnn.tasks.batches import BucketSampler

    archive = write_imdb_archive(tmp_path / "a.tar.gz", per_class=60)
    host = datamodule(archive, tmp_path / "c")
    tokens = DeviceTokens(host.datasets["train"], torch.device("cuda"))
    sampler = BucketSampler(host.datasets["train"].lengths, 16, host.order_seed)  # the host loader's own
    device_batches = DeviceBatches(tokens, torch.utils.data.DataLoader(range(len(tokens)), batch_size=16,
                                                                       sampler=sampler, collate_fn=np.asarray))
    ours = epoch(device_batches, 0)
    theirs = [to_device_keeping_lengths(b, torch.device("cuda")) for b in epoch(host.train_dataloader(), 0)]
    assert_same_batches(ours, theirs)
    assert all(b[0].is_cuda and b[2].is_cuda and not b[1].is_cuda and b[1].is_pinned() for b in ours)
    batches = iter(device_batches)
    next(batches)  # the epoch's host work and its one copy
    assert count_syncs(lambda: [b for b in batches]) == 0
