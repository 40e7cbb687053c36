"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates read x_t only.

    z_t  = sigmoid(Linear_z(x_t))            update gate
    h~_t = g(Linear_h(x_t))                  candidate, g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0)
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

One layer cannot choose what to keep from what it has read so far; stacking layers gives that back.
"""

from __future__ import annotations

from stacked_rnn.cells.minimal import MinimalRNN


class MinGRU(MinimalRNN):
    """Drop-in for nn.GRU (same constructor, forward, h_n and weight_ih/bias_ih names; no weight_hh).
    Per direction and layer: weight_ih_l{k} (2*H, in_k) = [W_z; W_h], bias_ih_l{k} (2*H,) = [b_z; b_h].
    Parameters per layer: MinGRU.layer_params(in_k, H, bias, bidirectional) = D * 2 * (H*in_k + H)."""

    BLOCKS = 2
