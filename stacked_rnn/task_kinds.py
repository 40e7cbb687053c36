"""What a task kind decides in the model, one class per kind: the head's width, the loss, the scores logged per stage,
how an evaluation batch is scored and what predict returns.

The data group names the kind (`data.task`: classify | regress | tag | lm); StackedRNNClassifier holds one of these
and asks it, so a new kind is one class here, not a branch in every method of the model.
- classify: one logit per sequence from the pooled features; BCE; accuracy.
- regress: one value per sequence; MSE (no head dropout: dropped features would be noise on the value itself).
- tag: a class at every step; cross-entropy over the steps whose target is not IGNORE; token accuracy, exact match.
- lm: the next token at every step; cross-entropy; bits per character over the whole evaluation stream, read in
  consecutive windows with the state carried across them (val/bpc), and nanoGPT's measure, the mean loss in nats
  over fixed random 64-character windows from a fresh state (val/window_nats).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy, MulticlassExactMatch

from stacked_rnn.tasks.batches import IGNORE


class BitsPerCharacter(Metric):
    """Cross-entropy summed over every scored step, divided by the steps and by ln 2: bits per character of a stream.
    Summed, not averaged per batch, so a short last window weighs what its characters weigh."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nats", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nats_sum: torch.Tensor, count: torch.Tensor) -> None:
        self.nats += nats_sum.double()
        self.count += count

    def compute(self) -> torch.Tensor:
        return (self.nats / self.count.clamp(min=1) / math.log(2)).float()


class TaskKind:
    """The classify kind, and the interface every kind keeps. `metrics` are logged per stage (val/<name>,
    test/<name>); the first is the training-time score (train/<metrics[0]>) where `scores_in_training`."""

    name = "classify"
    metrics: tuple[str, ...] = ("acc",)
    loss_name = "loss"  # logged as {stage}/{loss_name}
    per_step = False  # the head reads every step (B, T, C), not the pooled features (B, D*H)
    head_dropout = True
    scores_in_training = True
    causal = False  # predicts what comes next at every step: full-length windows, never a backward direction

    def outputs(self, num_classes: int, num_tokens: int) -> int:
        """Width of the linear head."""
        return 1

    def scores(self, num_classes: int) -> nn.ModuleDict:
        # validate_args=False: the checks read values on the host, a GPU sync at every step
        return nn.ModuleDict({"acc": BinaryAccuracy(validate_args=False)})

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE on the logits (B,), in float32 under bf16."""
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(right answers, answers scored) in this batch, on the device."""
        return (logits > 0).eq(targets.bool()).sum(), targets.new_tensor(len(targets))

    def update_scores(self, scores: nn.ModuleDict, logits: torch.Tensor, targets: torch.Tensor) -> None:
        for score in scores.values():
            score(logits.detach(), targets.long())

    def predict(self, out: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Positive-class probabilities (B,)."""
        return torch.sigmoid(out.float())

    def eval_step(self, model, batch, stage: str, scores: nn.ModuleDict, dataloader_idx: int = 0) -> None:
        """Loss and scores of one validation or test batch, logged as epoch means (synced across DDP ranks, so every
        rank picks the same best checkpoint)."""
        ids, lengths, targets = batch
        logits = model(ids, lengths)
        loss = self.loss(logits, targets)
        model.log(f"{stage}/{self.loss_name}", loss, on_epoch=True, prog_bar=True, batch_size=len(targets),
                  sync_dist=True)
        self.update_scores(scores, logits, targets)
        for name, score in scores.items():  # torchmetrics: summed over the epoch, synced across ranks
            model.log(f"{stage}/{name}", score, on_epoch=True, prog_bar=True, batch_size=len(targets))


class Regress(TaskKind):
    """One value per sequence, MSE; no score beyond the loss itself."""

    name = "regress"
    metrics = ("mse",)
    loss_name = "mse"
    head_dropout = False
    scores_in_training = False

    def scores(self, num_classes: int) -> nn.ModuleDict:
        return nn.ModuleDict({})

    def loss(self, logits, targets):
        return F.mse_loss(logits.float(), targets)

    def hits(self, logits, targets):
        return logits.new_zeros(()), logits.new_ones(())

    def predict(self, out, targets=None):
        return out.float()


class Tag(TaskKind):
    """A class at every step: logits (B, T, C) against class ids (B, T), IGNORE where a step is not scored."""

    name = "tag"
    metrics = ("token_acc", "exact_match")
    per_step = True

    def outputs(self, num_classes, num_tokens):
        return num_classes

    def scores(self, num_classes):
        return nn.ModuleDict({
            "token_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE, validate_args=False),
            "exact_match": MulticlassExactMatch(num_classes, ignore_index=IGNORE, validate_args=False)})

    def loss(self, logits, targets):
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

    def hits(self, logits, targets):
        scored = targets != IGNORE  # (B, T)
        return (logits.argmax(-1).eq(targets) & scored).sum(), scored.sum()

    def update_scores(self, scores, logits, targets):
        for score in scores.values():
            score(logits.detach().transpose(1, 2), targets)  # (B, C, T) against (B, T)

    def predict(self, out, targets=None):
        """Class ids (B, T) at every step."""
        return out.argmax(-1)


class LanguageModel(Tag):
    """The next token at every step over the whole vocabulary. Evaluation has two loaders: 0, the stream in
    consecutive windows (row b of batch i continues row b of batch i-1, so the model carries its state across them:
    bits per character of the whole stream); 1, fixed random windows from a fresh state (nanoGPT's mean loss in
    nats)."""

    name = "lm"
    metrics = ("bpc", "window_nats")
    causal = True
    scores_in_training = False  # train/loss is the training score; bpc = loss / ln 2

    def outputs(self, num_classes, num_tokens):
        return num_tokens

    def scores(self, num_classes):
        return nn.ModuleDict({"bpc": BitsPerCharacter(), "window_nats": MeanMetric()})

    def predict(self, out, targets=None):
        """Bits per character of each sequence (B,) given its own next characters, or the next-token distribution
        at the last step (B, V) when there are no targets."""
        if targets is None:
            return torch.softmax(out[:, -1].float(), dim=-1)
        nats = F.cross_entropy(out.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # (B, T)
        scored = (targets != IGNORE).sum(1).clamp(min=1)
        return nats.sum(1) / scored / math.log(2)

    def eval_step(self, model, batch, stage, scores, dataloader_idx=0):
        ids, lengths, targets = batch
        if dataloader_idx == 0:  # the stream: carry the state from the previous window of the same rows
            logits, model.stream_state = model.forward_with_state(ids, model.stream_state)  # (B, T, V)
            scored = targets != IGNORE
            nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                   reduction="sum")
            scores["bpc"].update(nats, scored.sum())
            model.log(f"{stage}/bpc", scores["bpc"], on_epoch=True, prog_bar=True, batch_size=len(targets),
                      add_dataloader_idx=False)
            return
        logits = model(ids, lengths)  # (B, 64, V) from a fresh state
        loss = self.loss(logits, targets)
        scores["window_nats"].update(loss, weight=len(targets))
        model.log(f"{stage}/window_nats", scores["window_nats"], on_epoch=True, prog_bar=True,
                  batch_size=len(targets), add_dataloader_idx=False)


TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (TaskKind(), Regress(), Tag(), LanguageModel())}
TASKS = tuple(TASK_KINDS)
TASK_METRICS = {name: kind.metrics for name, kind in TASK_KINDS.items()}  # logged per stage
