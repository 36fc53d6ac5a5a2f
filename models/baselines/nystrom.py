"""Nyström self-attention (Xiong et al., AAAI 2021), the attention of TransMIL.

softmax(Q K^T / sqrt(d)) V is approximated with m landmarks: Q~ and K~ are the means of m contiguous
segments of Q and K, and

    attention ~= softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V      (Nyströmformer Eq. 14)

where pinv is the iterative Moore-Penrose approximation of Razavi et al. (2014) used by the
Nyströmformer (Eq. 16). A depthwise convolution over the value sequence is added as a skip
connection (the Nyströmformer's "residual" option, kernel 33). Segments split the real sequence into
m nearly equal parts (no zero padding), so every segment is non-empty.

A sequence with no more tokens than landmarks is its own landmark set; then the formula above equals
exact attention (A pinv(A) A = A), so exact softmax attention is computed directly (cheaper, and
without the error of the iterative pseudo-inverse).
"""

from __future__ import annotations

import torch
from torch import nn


def iterative_pinv(matrix: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of each [..., m, m] matrix by the iteration of Razavi et al.

    Z0 = A^T / (||A||_1 ||A||_inf);  Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4.
    """
    identity = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype)
    abs_matrix = matrix.abs()
    max_col_sum = abs_matrix.sum(dim=-2).amax(dim=-1, keepdim=True).unsqueeze(-1)
    max_row_sum = abs_matrix.sum(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
    z = matrix.transpose(-1, -2) / (max_col_sum * max_row_sum)
    for _ in range(iterations):
        az = matrix @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def segment_means(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Means of ``num_segments`` contiguous, nearly equal segments along dim -2 of [..., n, d]."""
    n = x.shape[-2]
    segment = torch.arange(n, device=x.device) * num_segments // n
    sums = x.new_zeros(*x.shape[:-2], num_segments, x.shape[-1]).index_add_(-2, segment, x)
    counts = torch.bincount(segment, minlength=num_segments).to(x.dtype).unsqueeze(-1)
    return sums / counts


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention over [B, n, dim] sequences."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.value_conv = (
            nn.Conv2d(
                heads,
                heads,
                (residual_kernel, 1),
                padding=(residual_kernel // 2, 0),
                groups=heads,
                bias=False,
            )
            if residual_kernel
            else None
        )
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        q, k, v = (
            t.reshape(batch, n, self.heads, self.dim_head).transpose(1, 2)
            for t in self.to_qkv(x).chunk(3, dim=-1)
        )
        q = q * self.dim_head**-0.5
        if n <= self.num_landmarks:
            out = (q @ k.transpose(-1, -2)).softmax(dim=-1) @ v
        else:
            out = self.nystrom(q, k, v)
        if self.value_conv is not None:
            out = out + self.value_conv(v)
        out = out.transpose(1, 2).reshape(batch, n, self.heads * self.dim_head)
        return self.to_out(out)

    def nystrom(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Nyströmformer Eq. 14 with ``num_landmarks`` segment-mean landmarks; q is already scaled."""
        q_land, k_land = segment_means(q, self.num_landmarks), segment_means(k, self.num_landmarks)
        kernel_1 = (q @ k_land.transpose(-1, -2)).softmax(dim=-1)  # [B, h, n, m]
        kernel_2 = (q_land @ k_land.transpose(-1, -2)).softmax(dim=-1)  # [B, h, m, m]
        kernel_3 = (q_land @ k.transpose(-1, -2)).softmax(dim=-1)  # [B, h, m, n]
        return (kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)) @ (kernel_3 @ v)
