"""MinimalRNN: the machinery minGRU and minLSTM share, shaped like nn.GRU (layers, directions, packing, dropout).

Each direction of each layer is one call of scan.linear_scan: the gates read x_t only, so the input map runs over
the whole sequence at once and only the scan is sequential. A subclass sets BLOCKS, the number of (H, in) weight
blocks per direction: 2 for minGRU (z, h~), 3 for minLSTM (f, i, h~).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from stacked_rnn.cells.scan import SCANS, linear_scan


class MinimalRNN(nn.Module):
    """A stack of `num_layers` minimal recurrent layers with nn.GRU's constructor, forward and parameter names.

    forward(input, hx=None) -> (output, h_n): input (B, T, F) if batch_first else (T, B, F), (T, F) unbatched, or
    a PackedSequence; output (B, T, D*H) (or (T, B, D*H), or packed like the input); h_n (num_layers*D, B, H) holds
    each sequence's state at its real last step (backward direction: at step 0); hx the same shape, default zeros.

    Parameters per layer k and direction (suffix "" or "_reverse"): weight_ih_l{k} (BLOCKS*H, in_k) and
    bias_ih_l{k} (BLOCKS*H,), in_0 = input_size, in_k = D*H. No weight_hh: nothing multiplies h_{t-1} but a gate.
    """

    BLOCKS = 0  # weight blocks per direction, set by each cell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, scan: str = "chunked"):
        super().__init__()
        name = type(self).__name__
        if scan not in SCANS:
            raise ValueError(f"{name}: scan={scan!r} is not a scan; choose one of {', '.join(map(repr, SCANS))}")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"{name}: hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout={dropout} is not a probability in [0, 1]")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} acts between layers only, and num_layers=1", stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.scan = bidirectional, scan
        for layer in range(num_layers):
            width = input_size if layer == 0 else self.directions * hidden_size
            for suffix in self.suffixes:
                self.register_parameter(f"weight_ih_l{layer}{suffix}",
                                        nn.Parameter(torch.empty(self.BLOCKS * hidden_size, width)))
                if bias:
                    self.register_parameter(f"bias_ih_l{layer}{suffix}",
                                            nn.Parameter(torch.empty(self.BLOCKS * hidden_size)))
        self.reset_parameters()

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse")[:self.directions]

    @classmethod
    def layer_params(cls, input_size: int, hidden_size: int, bias: bool = True, bidirectional: bool = False) -> int:
        """Parameters of one layer: (2 if bidirectional else 1) * BLOCKS * (hidden_size * input_size + hidden_size),
        the bias term only with bias=True. input_size is the layer's own input width (D*H above the first)."""
        return (2 if bidirectional else 1) * cls.BLOCKS * hidden_size * (input_size + int(bias))

    def reset_parameters(self) -> None:
        """nn.Linear's default per direction and layer: U(-1/sqrt(in_k), 1/sqrt(in_k)) for weights and biases."""
        for name, param in self.named_parameters():
            layer = int(name.split("_l")[1].split("_")[0])
            width = self.input_size if layer == 0 else self.directions * self.hidden_size
            bound = 1 / math.sqrt(width) if width > 0 else 0.0
            nn.init.uniform_(param, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        return text + f", scan={self.scan!r}"

    def forward(self, input, hx: torch.Tensor | None = None):
        packed = isinstance(input, PackedSequence)
        unbatched = not packed and input.dim() == 2
        if packed:  # padded, in the batch's original order; each sequence's real length
            x, lengths = pad_packed_sequence(input, batch_first=True)  # (B, T, F), (B,) on the CPU
        else:
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            x, lengths = (x if self.batch_first else x.transpose(0, 1)), None  # (B, T, F)
            if unbatched and hx is not None:
                hx = hx.unsqueeze(1)
        B, T, _ = x.shape
        if hx is not None and hx.shape != (self.num_layers * self.directions, B, self.hidden_size):
            raise ValueError(f"hx has shape {tuple(hx.shape)}, expected "
                             f"{(self.num_layers * self.directions, B, self.hidden_size)}")
        ragged = lengths is not None and int(lengths.min()) < T
        # a backward direction starts at each sequence's real last step: padded steps keep its state (z = 0)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).to(x.device)[..., None] if ragged else None  # (B, T, 1)
        last = (lengths - 1).to(x.device) if ragged else None
        with torch.autocast(x.device.type, enabled=False):  # the scans run in float32 (or float64)
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            if mask is not None:
                mask = mask.to(x.dtype)
            h_n = []
            for layer in range(self.num_layers):
                outputs = []
                for direction, suffix in enumerate(self.suffixes):
                    weight = getattr(self, f"weight_ih_l{layer}{suffix}").to(x.dtype)
                    bias = getattr(self, f"bias_ih_l{layer}{suffix}").to(x.dtype) if self.bias else None
                    h0 = None if hx is None else hx[layer * self.directions + direction].to(x.dtype)
                    reverse = direction == 1
                    h = linear_scan(x, weight, bias, h0, mask if reverse else None, reverse, self.BLOCKS,
                                    self.scan)  # (B, T, H)
                    outputs.append(h)
                    if reverse:
                        h_n.append(h[:, 0])
                    else:  # each sequence's real last step
                        h_n.append(h[:, -1] if last is None else h[torch.arange(B, device=h.device), last])
                x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)  # (B, T, D*H)
                if self.dropout and self.training and layer < self.num_layers - 1:
                    x = F.dropout(x, self.dropout, training=True)
        h_n = torch.stack(h_n)  # (num_layers*D, B, H)
        if packed:
            return pack_like(x, lengths, input), h_n
        if unbatched:
            return x[0], h_n[:, 0]
        return (x if self.batch_first else x.transpose(0, 1)), h_n


def pack_like(out: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """Padded out (B, T, F), in the batch's original order, packed with the same batch order and sizes as `like`."""
    if like.sorted_indices is not None:
        out, lengths = out[like.sorted_indices], lengths[like.sorted_indices.cpu()]
    data = pack_padded_sequence(out, lengths, batch_first=True).data  # (sum of lengths, F)
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
