"""StackedRNNClassifier: embedding -> ONE fused nn.RNN/LSTM/GRU(num_layers=k) -> pooling -> dropout -> linear.

Layer L at step t reads layer L-1 at step t and itself at step t-1: the depth x time grid lives
inside the fused cuDNN/ATen kernel. Pooling reads only each review's real steps, so the "last"
state is its real last token, never padding (packed sequences where needed, see use_packing).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchmetrics.classification import BinaryAccuracy

CELLS = ("rnn", "lstm", "gru")
POOLS = ("last", "mean", "max")
INITS = ("torch", "keras")
LR_SCHEDULES = ("constant", "cosine")
PACKING = ("auto", "always", "never")


class StackedRNNClassifier(L.LightningModule):
    """Binary sentiment classifier over a stack of `layers` recurrent layers of `units` each."""

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
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # plain ints/floats/strs: checkpoints load with weights_only=True
        self.embedding = nn.Embedding(num_tokens, embed_dim, padding_idx=0)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.rnn = getattr(nn, cell.upper())(  # nn.RNN | nn.LSTM | nn.GRU
            embed_dim, units, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
            bidirectional=bidirectional, batch_first=True,
        )
        self.head_dropout = nn.Dropout(head_dropout)
        self.classifier = nn.Linear(units * (2 if bidirectional else 1), 1)
        if init == "keras":
            self.keras_init()
        self.train_acc, self.val_acc, self.test_acc = BinaryAccuracy(), BinaryAccuracy(), BinaryAccuracy()

    @torch.no_grad()
    def keras_init(self) -> None:
        """Keras defaults: embeddings U(-0.05, 0.05), Glorot-uniform input and output weights,
        orthogonal recurrent weights, zero biases (LSTM forget gate 1).

        PyTorch's defaults (N(0, 1) embeddings, U(+-1/sqrt(H)) everywhere) saturate a small tanh RNN
        from the first step; this is what lets the 5-unit SimpleRNN reference learn in 2 epochs.
        """
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        self.embedding.weight[0].zero_()
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[self.hparams.cell]
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_ih"):  # (gates*H, in): Glorot over the whole Keras kernel
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):  # orthogonal per gate block, as Keras' recurrent kernel
                for block in param.chunk(gates, dim=0):
                    nn.init.orthogonal_(block)
            elif name.startswith("bias"):
                param.zero_()
                if self.hparams.cell == "lstm" and name.startswith("bias_ih"):
                    param.chunk(4)[1].fill_(1.0)  # gate order i, f, g, o
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def use_packing(self, ids: torch.Tensor) -> bool:
        """Pack when it is needed or cheap. A backward direction must start at each review's real end,
        so bidirectional always packs; cuDNN packs for free. A unidirectional stack on CPU runs padded
        (about 3x faster than ATen's packed CPU loop): step t never sees the padding after it, and
        pooling below reads only real steps, so the result is the same."""
        return self.hparams.pack == "always" or (
            self.hparams.pack == "auto" and (self.hparams.bidirectional or ids.is_cuda)
        )

    def run_rnn(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Top-layer outputs (B, T, D*H) of right-padded ids (B, T); only steps t < length are meaningful."""
        x = self.embed_dropout(self.embedding(ids))  # (B, T, E)
        if not self.use_packing(ids):
            return self.rnn(x)[0]  # (B, T, D*H)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=ids.shape[1])
        return out  # (B, T, D*H)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D*H) over each review's real steps."""
        out = self.run_rnn(ids, lengths)  # (B, T, D*H)
        lengths = lengths.to(out.device)
        pool, units = self.hparams.pool, self.hparams.units
        if pool == "last":  # forward direction at the real last token; backward direction ends at step 0
            last = out[torch.arange(len(out), device=out.device), lengths - 1]  # (B, D*H)
            return torch.cat([last[:, :units], out[:, 0, units:]], dim=-1) if self.hparams.bidirectional else last
        real = (torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
        if pool == "mean":
            return out.masked_fill(~real, 0.0).sum(1) / lengths[:, None].to(out.dtype)  # (B, D*H)
        return out.masked_fill(~real, float("-inf")).amax(1)  # (B, D*H)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B,) of the positive class."""
        return self.classifier(self.head_dropout(self.encode(ids, lengths))).squeeze(-1)

    def _step(self, batch, stage: str, accuracy: BinaryAccuracy) -> torch.Tensor:
        ids, lengths, labels = batch
        logits = self(ids, lengths)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        accuracy(logits.detach(), labels.long())
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx):
        ids, lengths, _ = batch
        return torch.sigmoid(self(ids, lengths).float())

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, eps=hp.adam_eps) \
            if hp.weight_decay else torch.optim.Adam(self.parameters(), lr=hp.lr, eps=hp.adam_eps)
        if hp.lr_schedule == "constant":
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
