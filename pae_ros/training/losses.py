"""Pose losses. Positions are normalised (unitless), quaternions wxyz."""
from __future__ import annotations

import torch
from torch import nn


class LearnedPoseLoss(nn.Module):
    """``|x - x^| exp(-s_x) + s_x + |q/|q| - q^/|q^|| exp(-s_q) + s_q`` with learned s_x, s_q.

    The quaternion term uses the sign-invariant distance min(|q - q^|, |q + q^|).
    """

    def __init__(self, s_x: float = 0.0, s_q: float = -3.0, learnable: bool = True):
        super().__init__()
        self.s_x = nn.Parameter(torch.tensor(float(s_x)), requires_grad=learnable)
        self.s_q = nn.Parameter(torch.tensor(float(s_q)), requires_grad=learnable)

    def forward(self, x_est, q_est, x_gt, q_gt) -> tuple[torch.Tensor, dict]:
        lx = (x_est - x_gt).norm(dim=-1).mean()
        qe = q_est / q_est.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        qg = q_gt / q_gt.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        lq = torch.minimum((qe - qg).norm(dim=-1), (qe + qg).norm(dim=-1)).mean()
        loss = lx * torch.exp(-self.s_x) + self.s_x + lq * torch.exp(-self.s_q) + self.s_q
        return loss, {"loss_x": float(lx.detach()), "loss_q": float(lq.detach())}
