"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): an LSTM whose gates read x_t only, with its forget
and input gates normalised to sum to one (the paper's length-independent version).

    f_t = sigmoid(Linear_f(x_t)),  i_t = sigmoid(Linear_i(x_t)),  f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
    h~_t = g(Linear_h(x_t)),  g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0)
    h_t = f'_t * h_{t-1} + i'_t * h~_t

f' = 1 - i' and i' = sigmoid(log i - log f), so this is minGRU's recurrence with z_pre = softplus(-f_pre) -
softplus(-i_pre), computed that way (stable where both gates are tiny); scan.py serves both.
"""

from __future__ import annotations

from stacked_rnn.cells.minimal import MinimalRNN


class MinLSTM(MinimalRNN):
    """Drop-in for nn.GRU / nn.LSTM's weight names (no cell state: h_n only, as nn.GRU returns).
    Per direction and layer: weight_ih_l{k} (3*H, in_k) = [W_f; W_i; W_h], bias_ih_l{k} (3*H,) = [b_f; b_i; b_h].
    Parameters per layer: MinLSTM.layer_params(in_k, H, bias, bidirectional) = D * 3 * (H*in_k + H)."""

    BLOCKS = 3
