"""Minimal recurrent cells (Feng et al. 2024): minGRU and minLSTM as drop-ins for nn.GRU, and their scans."""

from stacked_rnn.cells.mingru import MinGRU
from stacked_rnn.cells.minimal import MinimalRNN
from stacked_rnn.cells.minlstm import MinLSTM
from stacked_rnn.cells.scan import (SCAN_FUNCTIONS, SCANS, ChunkedLinearScan, ChunkedScan, chunked_scan, clear_scratch,
                                    linear_scan, log_scan, reference_scan)

MINIMAL_CELLS = {"mingru": MinGRU, "minlstm": MinLSTM}

__all__ = ["MINIMAL_CELLS", "SCANS", "ChunkedLinearScan", "ChunkedScan", "MinGRU", "MinLSTM", "MinimalRNN",
           "SCAN_FUNCTIONS", "chunked_scan", "clear_scratch", "linear_scan", "log_scan",
           "reference_scan"]
