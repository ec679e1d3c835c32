"""A fold ensemble: K CR-Nets of one architecture whose logits are averaged (this project's choice, not the paper's).

Cross-validation (§2.2, :mod:`crlearn.tasks.cv`) trains K models, each on a different K-1 parts of the patients. Their
mean logit map is an ensemble (Dietterich, "Ensemble methods in machine learning", MCS 2000): it is used exactly like
one CR-Net, since its output is a :class:`~crlearn.nn.model.CRNetOutput` whose ``coarse`` and ``final`` are the
means of the members' ``coarse`` and ``final`` logits. It is saved as one checkpoint file with its own format tag
(:func:`crlearn.training.checkpoint.save_checkpoint`), which :func:`crlearn.training.checkpoint.load_checkpoint` reads
back into an ensemble, so ``crlearn evaluate``, ``predict`` and ``burden`` take it as they take one model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from crlearn.nn.model import CRNet, CRNetOutput


class CRNetEnsemble(nn.Module):
    """The mean of the members' logits, coarse and final; ``config`` is the members' (shared) config.

    Args:
        members: at least one :class:`~crlearn.nn.model.CRNet`, all with the same config (same classes and size).
    """

    def __init__(self, members: Sequence[CRNet]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        config = members[0].config
        if any(m.config != config for m in members):
            raise ValueError("every member of an ensemble must have the same CRNetConfig")
        self.config = config
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> CRNetOutput:
        outs = [m(x) for m in self.members]
        coarse = torch.stack([o.coarse for o in outs]).mean(0)
        final = torch.stack([o.final for o in outs]).mean(0)
        return CRNetOutput(coarse, final)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def __len__(self) -> int:
        return len(self.members)
