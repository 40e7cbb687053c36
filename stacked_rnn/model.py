"""StackedRNNClassifier: embedding -> ONE fused nn.RNN/LSTM/GRU/MinGRU/MinLSTM(num_layers=k) -> pooling -> dropout ->
linear.

With residual=true (or norm=layer) the stack is k single-layer modules run one at a time, each layer from the second
on adding its input to its output (GNMT's skip connections); norm=layer puts a LayerNorm in front of every layer and
of the head (with residual=true: the pre-norm block of Feng et al. 2024). With input_dim > 0 the RNN reads
real-valued features (B, T, input_dim) instead of embedded token ids. The task kind, as the data group describes it,
chooses the head, loss, scores and predictions (stacked_rnn.task_kinds): classify (one logit per sequence, BCE),
regress (one value, MSE), tag (num_classes logits at every step) or lm (the next token at every step, bits per
character).

Layer L at step t reads layer L-1 at step t and itself at step t-1: the depth x time grid lives
inside the fused cuDNN/ATen kernel. Pooling reads only each review's real steps, so the "last"
state is its real last token, never padding (packed sequences where needed, see use_packing).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from stacked_rnn.cells import MinGRU, MinLSTM
from stacked_rnn.task_kinds import TASK_KINDS, TASK_METRICS, TASKS  # noqa: F401 (TASKS, TASK_METRICS: public here too)

CELL_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU, "mingru": MinGRU, "minlstm": MinLSTM}
CELLS = tuple(CELL_MODULES)
POOLS = ("last", "mean", "max")
INITS = ("torch", "keras", "identity")
LR_SCHEDULES = ("constant", "cosine")
PACKING = ("auto", "always", "never")
NORMS = ("none", "layer")
# per layer and direction: weight blocks, whether they also read h_{t-1} (H x H each), bias vectors per block
GATES = {"rnn": (1, True, 2), "lstm": (4, True, 2), "gru": (3, True, 2),  # tanh | i, f, g, o | r, z, n
         "mingru": (2, False, 1), "minlstm": (3, False, 1)}  # z, h~ | f, i, h~: the gates read x_t only


def stack_params(cell: str, layers: int, units: int, input_size: int, bidirectional: bool = False, outputs: int = 1,
                 norm: str = "none") -> int:
    """Parameters above the embedding: the recurrent stack (each direction of layer l holds blocks x (H x in_l +
    [H x H] + biases x H), in_0 = input_size, in_l = D*H), the LayerNorms of norm=layer (2 x in_l per layer, 2 x D*H
    before the head) and the linear head (D*H x outputs + outputs). This is what depth and width change; the
    embedding table is the same for every depth and its size depends on the data's vocabulary."""
    directions = 2 if bidirectional else 1
    width = directions * units
    blocks, reads_h, biases = GATES[cell]
    inputs = [input_size if layer == 0 else width for layer in range(layers)]
    recurrent = sum(directions * blocks * (units * n_in + reads_h * units * units + biases * units) for n_in in inputs)
    norms = 2 * (sum(inputs) + width) if norm == "layer" else 0
    return recurrent + norms + width * outputs + outputs


def units_for_budget(budget: int, cell: str, layers: int, input_size: int, bidirectional: bool = False,
                     outputs: int = 1, norm: str = "none") -> int:
    """The width whose stack_params is closest to `budget` (ties go to the narrower), so that depths can be
    compared at equal parameters (Melis et al. 2017) instead of deeper also meaning bigger."""
    def count(units: int) -> int:
        return stack_params(cell, layers, units, input_size, bidirectional, outputs, norm)

    if count(1) > budget:
        raise ValueError(f"param_budget={budget} is too small: {cell} x {layers} layers with {input_size}-d inputs "
                         f"{'(bidirectional) ' if bidirectional else ''}needs {count(1)} parameters at units=1")
    low, high = 1, 2
    while count(high) <= budget:  # count grows with units: bracket the budget, then bisect
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) <= budget else (low, middle)
    return low if budget - count(low) <= count(high) - budget else high


class StackedRNNClassifier(L.LightningModule):
    """A classifier (or regressor, tagger or language model: the data's task kind) over a stack of `layers` recurrent
    layers of `units` each. With `param_budget` the width is chosen instead (units_for_budget) and `units` is
    ignored; hparams.units holds the width used."""

    def __init__(
        self,
        num_tokens: int,
        cell: str = "gru",
        layers: int = 2,
        units: int = 128,
        embed_dim: int = 128,
        dropout: float = 0.2,
        bidirectional: bool = False,
        pool: str = "last",
        embed_dropout: float = 0.0,
        head_dropout: float = 0.2,
        init: str = "keras",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        lr_schedule: str = "constant",
        pack: str = "auto",
        residual: bool = False,
        input_dim: int = 0,
        task: str = "classify",
        param_budget: int | None = None,
        num_classes: int = 0,
        norm: str = "none",
    ):
        super().__init__()
        if bidirectional and pack == "never":
            raise ValueError("pack='never' with bidirectional=True: the backward direction would start on each "
                             "review's padding instead of its last real token. Use pack='auto' or 'always' "
                             "(a bidirectional stack always packs)")
        if task not in TASK_KINDS:
            raise ValueError(f"task={task!r} is not a task kind: expected one of {TASKS}")
        self.kind = TASK_KINDS[task]  # head width, loss, scores, predictions: stacked_rnn.task_kinds
        if bidirectional and self.kind.causal:
            raise ValueError(f"bidirectional=True with task={task!r}: the backward direction would read the very "
                             "characters the model has to predict")
        outputs = self.kind.outputs(num_classes, num_tokens)
        if param_budget is not None:  # equal-parameter comparisons: the width follows from the budget
            units = units_for_budget(param_budget, cell, layers, input_dim or embed_dim, bidirectional, outputs, norm)
        self.save_hyperparameters(logger=False)  # plain ints/floats/strs: checkpoints load with weights_only=True
        self.hparams.units = units  # the width in use, also when it came from param_budget
        # token ids -> (B, T, E) embeddings; real-valued inputs (B, T, input_dim) go to the RNN as they are
        self.embedding = nn.Embedding(num_tokens, embed_dim, padding_idx=0) if not input_dim else nn.Identity()
        rnn_in = input_dim or embed_dim
        self.embed_dropout = nn.Dropout(embed_dropout)
        Cell = CELL_MODULES[cell]  # nn.RNN | nn.LSTM | nn.GRU | MinGRU | MinLSTM: one interface
        width = units * (2 if bidirectional else 1)
        if residual or norm == "layer":  # one module per layer, so that layers can be added to (or normed) apart
            self.rnn = None
            self.stack = nn.ModuleList(Cell(rnn_in if k == 0 else width, units, bidirectional=bidirectional,
                                            batch_first=True) for k in range(layers))
        else:
            self.stack = None
            self.rnn = Cell(rnn_in, units, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                            bidirectional=bidirectional, batch_first=True)
        self.norms = nn.ModuleList(nn.LayerNorm(rnn_in if k == 0 else width) for k in range(layers)) \
            if norm == "layer" else None  # in front of each layer
        self.head_norm = nn.LayerNorm(width) if norm == "layer" else nn.Identity()
        self.layer_dropout = nn.Dropout(dropout)  # between layers, when they run one at a time
        # not for regression: in front of a regression head, dropped features are noise on the predicted value itself
        # (data=adding with head dropout 0.2: an LSTM at T=100 stays at the baseline MSE 0.16 for 3,000 steps; 0.02 without)
        self.head_dropout = nn.Dropout(head_dropout if self.kind.head_dropout else 0.0)
        self.classifier = nn.Linear(width, outputs)
        if init in ("keras", "identity"):
            self.keras_init(recurrent_init=nn.init.eye_ if init == "identity" else nn.init.orthogonal_)

        self.val_scores, self.test_scores = self.kind.scores(num_classes), self.kind.scores(num_classes)
        self.stream_state = None  # task=lm: the state carried across the evaluation stream's consecutive windows
        self.train_sums: torch.Tensor | None = None  # (3,) on the device: this epoch's sum of loss*B, hits, scored
        self.train_count = 0  # sequences seen this epoch

    @torch.no_grad()
    def keras_init(self, recurrent_init=nn.init.orthogonal_) -> None:
        """Keras defaults: embeddings U(-0.05, 0.05), Glorot-uniform input and output weights,
        orthogonal recurrent weights, zero biases (LSTM forget gate 1), and Keras's ONE bias per gate for
        SimpleRNN and LSTM (the recurrent bias b_hh stays zero and frozen; Keras's GRU has two, kept).
        `recurrent_init=nn.init.eye_` (init=identity, after Le et al. 2015) starts each recurrent block as the identity
        instead: every unit carries its state forward unrotated, so word cues from the first steps reach the last.

        PyTorch's defaults (N(0, 1) embeddings, U(+-1/sqrt(H)) everywhere) saturate a small tanh RNN
        from the first step. And b_ih + b_hh get identical gradients, so Adam moves their sum twice as fast
        as Keras's single bias (seeds 0-15 of the 5-unit reference: 4 of 40 runs stuck below 0.72 with it, none
        of 40 without; docs/seed_fidelity.md).
        """
        if isinstance(self.embedding, nn.Embedding):
            nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
            self.embedding.weight[0].zero_()
        gates = GATES[self.hparams.cell][0]
        recurrent = self.rnn if self.stack is None else self.stack
        for name, param in recurrent.named_parameters():
            name = name.rsplit(".", 1)[-1]  # stack.<k>.weight_ih_l0 -> weight_ih_l0
            if name.startswith("weight_ih"):  # (gates*H, in): Glorot over the whole Keras kernel
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):  # per gate block (H, H): orthogonal as Keras, or the identity
                for block in param.chunk(gates, dim=0):
                    recurrent_init(block)
            elif name.startswith("bias"):
                param.zero_()
                if self.hparams.cell == "lstm" and name.startswith("bias_ih"):
                    param.chunk(4)[1].fill_(1.0)  # gate order i, f, g, o
                if self.hparams.cell in ("rnn", "lstm") and name.startswith("bias_hh"):
                    param.requires_grad_(False)  # one bias per gate, as Keras
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def use_packing(self, ids: torch.Tensor) -> bool:
        """Pack when it is needed or chosen. A backward direction must start at each review's real end, so a
        bidirectional stack always packs (pack='never' is refused for it). A unidirectional stack can run padded on
        any device: step t never sees the padding after it, and pooling reads only real steps (the last state is
        gathered at each review's real last token on the device), so the result is the same
        (tests/test_gpu_path.py). pack='auto' runs it padded on CPU (about 3x faster than ATen's packed CPU loop)
        and packed on CUDA; pack='never' runs it padded there too, which lets cuDNN choose its persistent kernel
        for small hidden sizes (unpacked input only) and needs no lengths on the host."""
        if self.hparams.bidirectional or self.hparams.pack == "always":
            return True
        if self.kind.causal:  # a language model's windows are all full length: nothing to pack
            return False
        return self.hparams.pack == "auto" and ids.is_cuda

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """What the first recurrent layer reads: embedded ids (B, T) -> (B, T, E) with embed_dropout, or real-valued
        features (B, T, F) as they are: dropping the adding task's marker would hide which steps count."""
        if self.hparams.input_dim:
            return ids  # (B, T, F)
        return self.embed_dropout(self.embedding(ids))  # (B, T, E)

    def run_module(self, rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Output sequence (B, T, D*H) of one recurrent module (fused or single-layer) on right-padded x (B, T, F)."""
        if not self.use_packing(x):
            return rnn(x)[0]  # (B, T, D*H)
        lengths = lengths.cpu()  # no-op for batches from our DataModules, whose lengths stay on the CPU
        # batches come longest first (IMDBDataModule): then packing reorders nothing on the GPU and never syncs
        longest_first = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=longest_first)
        out, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return out  # (B, T, D*H)

    def run_layers(self, x: torch.Tensor, lengths: torch.Tensor | None, layers,
                   states: list | None = None) -> list[torch.Tensor]:
        """Each layer's output sequence (B, T, D*H), running single-layer modules one at a time: dropout
        between layers as the fused module applies it, with norm=layer a LayerNorm on what each layer reads, and
        with residual=true x_{l+1} = x_l + layer_l(x_l) from the second layer on (the first changes width from the
        input's to D*H). With `states` (one start state per layer, None: zeros) the full-length x runs unpacked from
        them, and each entry is replaced by its layer's state after the last step, detached (a language model's
        stream)."""
        outputs = []
        for k, layer in enumerate(layers):
            inp = x if k == 0 else self.layer_dropout(outputs[-1])
            read = self.norms[k](inp) if self.norms is not None else inp
            if states is None:
                out = self.run_module(layer, read, lengths)  # (B, T, D*H)
            else:
                out, state = layer(read, states[k])  # (B, T, D*H)
                states[k] = tree_detach(state)
            outputs.append(out + inp if self.hparams.residual and k > 0 else out)
        return outputs

    def run_rnn(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Top-layer outputs (B, T, D*H) of right-padded ids (B, T), as the head reads them (after the head's
        LayerNorm with norm=layer); only steps t < length are meaningful."""
        x = self.inputs(ids)  # (B, T, E)
        if self.stack is not None:
            return self.head_norm(self.run_layers(x, lengths, self.stack)[-1])
        return self.run_module(self.rnn, x, lengths)  # (B, T, D*H)

    def run_rnn_with_state(self, ids: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
        """Top-layer outputs (B, T, D*H) of full-length ids (B, T) started from `state` (None: zeros), and the state
        after the last step (the fused module's h_n, (h_n, c_n) for an LSTM, or one per layer for a stack run
        layer by layer), detached: the language model's evaluation stream and generation carry it on."""
        x = self.inputs(ids)  # (B, T, E)
        if self.stack is None:
            out, state = self.rnn(x, state)
            return out, tree_detach(state)
        states = list(state) if state is not None else [None] * len(self.stack)
        return self.head_norm(self.run_layers(x, None, self.stack, states)[-1]), states

    def forward_with_state(self, ids: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
        """Per-step logits (B, T, C) of full-length ids from `state`, and the state after the last step."""
        out, state = self.run_rnn_with_state(ids, state)
        return self.classifier(self.head_dropout(out)), state

    def last_state(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A layer's final hidden state (B, D*H) from its outputs (B, T, D*H), as the fused module's h_n holds
        it: the forward direction at the real last token, the backward direction at step 0. Gathered on the device:
        lengths on the CPU (pinned, as the DataModules give them) are copied without waiting, and nothing is read
        back to the host."""
        lengths = lengths.to(out.device, non_blocking=True)  # pinned CPU lengths: an async copy
        last = out.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)  # (B, D*H)
        units = self.hparams.units
        return torch.cat([last[:, :units], out[:, 0, units:]], dim=-1) if self.hparams.bidirectional else last

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D*H) over each review's real steps."""
        out = self.run_rnn(ids, lengths)  # (B, T, D*H)
        lengths = lengths.to(out.device, non_blocking=True)
        if self.hparams.pool == "last":
            return self.last_state(out, lengths)
        pool = self.hparams.pool
        real = (torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
        if pool == "mean":
            return out.masked_fill(~real, 0.0).sum(1) / lengths[:, None].to(out.dtype)  # (B, D*H)
        return out.masked_fill(~real, float("-inf")).amax(1)  # (B, D*H)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B,) of the positive class (the value itself for task=regress); for task=tag and lm, logits
        (B, T, C) at every step."""
        if self.kind.per_step:
            return self.classifier(self.head_dropout(self.run_rnn(ids, lengths)))  # (B, T, C)
        return self.classifier(self.head_dropout(self.encode(ids, lengths))).squeeze(-1)  # (B,)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task kind's loss, in float32 under bf16."""
        return self.kind.loss(logits, targets)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(right answers, answers scored) in this batch, on the device: sequences (classify), scored steps (tag)."""
        return self.kind.hits(logits, targets)

    def training_step(self, batch, batch_idx):
        """Loss and accuracy are summed on the device and handed to self.log only every log_every_n_steps steps
        (Lightning writes step values no more often) and at the epoch end: the per-step self.log and metric
        bookkeeping cost the tiny seed model 17% of its speed on CPU."""
        ids, lengths, targets = batch
        logits = self(ids, lengths)
        loss = self.loss(logits, targets)
        hits, scored = self.hits(logits.detach(), targets)
        step = torch.stack([loss.detach() * len(targets), hits.float(), scored.float()])  # (3,): stays on the device
        self.train_sums = step if self.train_sums is None else self.train_sums + step
        self.train_count += len(targets)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log(f"train/{self.loss_name}", loss, prog_bar=True, batch_size=len(targets))
        return loss

    def on_train_epoch_start(self):
        self.train_sums, self.train_count = None, 0

    def on_train_epoch_end(self):
        if self.train_sums is None:
            return
        loss_sum, hits, scored = self.train_sums
        self.log(f"train/{self.loss_name}_epoch", loss_sum / self.train_count, sync_dist=True)
        if self.kind.scores_in_training:
            self.log(f"train/{self.kind.metrics[0]}", hits / scored, sync_dist=True)

    @property
    def loss_name(self) -> str:
        return self.kind.loss_name

    def _eval_step(self, batch, batch_idx: int, stage: str, scores: nn.ModuleDict, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self.stream_state = None  # task=lm: the stream starts afresh at every evaluation
        self.kind.eval_step(self, batch, stage, scores, dataloader_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, batch_idx, "val", self.val_scores, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, batch_idx, "test", self.test_scores, dataloader_idx)

    def predict_step(self, batch, batch_idx):
        """Positive-class probabilities (B,), predicted values (regress), class ids (B, T) at every step (tag), or
        bits per character of each sequence (lm): the task kind's prediction."""
        ids, lengths, targets = batch
        return self.kind.predict(self(ids, lengths).float(), targets)

    def configure_optimizers(self):
        hp = self.hparams
        # fused: one kernel for the whole update (CPU too: 1.1 ms instead of 6.1 ms per step for the default GRU).
        # Not under mixed precision with clipping (trainer=gpu): a fused step unscales fp16 gradients itself, so
        # Lightning's AMP plugin refuses to clip before it (RuntimeError at the first step); foreach Adam there.
        trainer = self._trainer
        fused = not (trainer is not None and isinstance(trainer.precision_plugin, MixedPrecision)
                     and trainer.gradient_clip_val)
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, eps=hp.adam_eps,
                                      fused=fused) \
            if hp.weight_decay else torch.optim.Adam(self.parameters(), lr=hp.lr, eps=hp.adam_eps, fused=fused)
        if hp.lr_schedule == "constant":
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def stack_params(self) -> int:
        """Parameters of the recurrent stack and the head: what model.param_budget holds fixed."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("embedding."))


def tree_detach(state):
    """A recurrent state (a tensor, an LSTM's (h, c), or a list of them per layer) cut from the graph."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(tree_detach(s) for s in state)
