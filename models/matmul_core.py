"""The recurrent core (nn.LSTM / nn.GRU / nn.RNN) computed with ordinary torch ops: linear layers, sigmoid, tanh.

:class:`MatMulCore` wraps an existing core and computes the same function from that core's own
parameters (no copies: a trained model exports as it is), looping over time steps and layers in
Python. Exported to ONNX it becomes plain Gemm/MatMul/Add/Sigmoid/Tanh nodes instead of one ONNX
LSTM/GRU/RNN operator: ``capkit export --cell matmul`` (:func:`capkit.export.onnx_export.export_model`).
Why a second form: on ONNX Runtime's CUDA provider the recurrent operators do host work per call
(cuDNN descriptors, workspace), which a caption pays at every one-token step.

The gate equations are PyTorch's (torch.nn.LSTM / GRU / RNN documentation), per layer k, with
x the layer's input and h, c its state:
- LSTM, gates i, f, g, o in that order in weight_ih / weight_hh:
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g),  h' = sigmoid(o) * tanh(c');
- GRU, gates r, z, n: r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z likewise,
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h;
- RNN: h' = tanh (or relu)(W_ih x + b_ih + W_hh h + b_hh).
Dropout between layers happens in training only; this module computes the eval-mode function and
refuses to run in training mode where the core has such dropout.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from capkit.models.config import ModelConfigError

RecurrentCore = Union[nn.LSTM, nn.GRU, nn.RNN]
LstmState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, B, hidden)
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}  # nn.RNN's choices


def _check_core(core: nn.Module) -> None:
    """One-line ModelConfigError for a core this module does not compute."""
    if not isinstance(core, (nn.LSTM, nn.GRU, nn.RNN)):
        raise ModelConfigError(f"MatMulCore wraps an nn.LSTM, nn.GRU or nn.RNN, not {type(core).__name__}")
    name = type(core).__name__
    if not core.batch_first:
        raise ModelConfigError(f"MatMulCore needs a batch_first {name} (inputs (B, T, features))")
    if core.bidirectional:
        raise ModelConfigError(f"MatMulCore computes a unidirectional {name} only, not a bidirectional one")
    if getattr(core, "proj_size", 0):
        raise ModelConfigError(f"MatMulCore computes an {name} without projections, not proj_size {core.proj_size}")
    if isinstance(core, nn.RNN) and core.nonlinearity not in NONLINEARITIES:
        raise ModelConfigError(f"MatMulCore computes an nn.RNN with nonlinearity tanh or relu, not "
                               f"{core.nonlinearity!r}")


def _stack(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """torch.stack, but one tensor is only unsqueezed: exported, stack is Unsqueeze + Concat, and the
    graphs stack one time step (and often one layer)."""
    return tensors[0].unsqueeze(dim) if len(tensors) == 1 else torch.stack(tensors, dim=dim)


class MatMulCore(nn.Module):
    """``core``'s function with ordinary torch ops: ``forward(inputs, state)`` -> ``(out, h_n)``, or
    ``(out, (h_n, c_n))`` for an LSTM, as the wrapped module returns them.

    ``inputs`` (B, T, features); ``state`` None (zeros), h (layers, B, hidden), or (h, c) for an LSTM;
    ``out`` (B, T, hidden) is the last layer's h at every step. ``core`` is held as a submodule, so its
    parameters are read at every call and ``.eval()`` / ``.to()`` reach it."""

    def __init__(self, core: RecurrentCore):
        super().__init__()
        _check_core(core)
        self.core = core
        self.train(core.training)

    def forward(self, inputs: torch.Tensor, state: Optional[torch.Tensor | LstmState] = None
                ) -> tuple[torch.Tensor, torch.Tensor | LstmState]:
        core = self.core
        if self.training and core.dropout > 0 and core.num_layers > 1:
            raise ModelConfigError(f"MatMulCore applies no dropout between layers (the {type(core).__name__} has "
                                   f"{core.dropout:g}); call .eval() first: it computes the eval-mode function")
        if inputs.dim() != 3:
            raise ModelConfigError(f"MatMulCore takes batched inputs (B, T, features), got {inputs.dim()} dimensions")
        lstm = isinstance(core, nn.LSTM)
        h, c = self._initial_state(inputs, state, lstm)  # lists of (B, H), one per layer
        steps = []
        for t in range(inputs.shape[1]):  # T is 1 in both exported graphs
            x = inputs[:, t]  # (B, features)
            for k in range(core.num_layers):
                if lstm:
                    h[k], c[k] = self._lstm_cell(k, x, h[k], c[k])  # (B, H), (B, H)
                elif isinstance(core, nn.GRU):
                    h[k] = self._gru_cell(k, x, h[k])  # (B, H)
                else:
                    h[k] = self._rnn_cell(k, x, h[k])  # (B, H)
                x = h[k]  # the next layer's input
            steps.append(x)
        out = _stack(steps, dim=1)  # (B, T, H)
        h_n = _stack(h, dim=0)  # (L, B, H)
        return (out, (h_n, _stack(c, dim=0))) if lstm else (out, h_n)

    def _initial_state(self, inputs: torch.Tensor, state: Optional[torch.Tensor | LstmState],
                       lstm: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """h and c (c empty but for an LSTM) as lists of per-layer (B, H) tensors; None is zeros."""
        core = self.core
        if state is None:
            zeros = inputs.new_zeros(core.num_layers, inputs.shape[0], core.hidden_size)  # (L, B, H)
            state = (zeros, zeros) if lstm else zeros
        h0, c0 = state if lstm else (state, None)
        return list(h0.unbind(0)), list(c0.unbind(0)) if c0 is not None else []

    def _linears(self, k: int, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer k's W_ih x + b_ih and W_hh h + b_hh, each (B, gates * H); biases may be absent (bias=False)."""
        core = self.core
        from_input = F.linear(x, getattr(core, f"weight_ih_l{k}"), getattr(core, f"bias_ih_l{k}", None))
        from_state = F.linear(h, getattr(core, f"weight_hh_l{k}"), getattr(core, f"bias_hh_l{k}", None))
        return from_input, from_state

    def _gates(self, stacked: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, gates * H) -> the gates, each (B, H). split by the fixed hidden size, not chunk: the TorchScript
        exporter writes chunk with Shape/Div/Slice nodes that compute the size again at every call."""
        return stacked.split(self.core.hidden_size, dim=1)

    def _lstm_cell(self, k: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> LstmState:
        from_input, from_state = self._linears(k, x, h)
        i, f, g, o = self._gates(from_input + from_state)  # each (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _gru_cell(self, k: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        from_input, from_state = self._linears(k, x, h)
        input_r, input_z, input_n = self._gates(from_input)  # each (B, H)
        state_r, state_z, state_n = self._gates(from_state)  # each (B, H)
        r = torch.sigmoid(input_r + state_r)  # (B, H)
        z = torch.sigmoid(input_z + state_z)  # (B, H)
        n = torch.tanh(input_n + r * state_n)  # (B, H): r gates W_hn h + b_hn, bias included, as PyTorch's GRU
        return (1 - z) * n + z * h

    def _rnn_cell(self, k: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        from_input, from_state = self._linears(k, x, h)
        return NONLINEARITIES[self.core.nonlinearity](from_input + from_state)  # (B, H)


__all__ = ["MatMulCore"]
