"""ConceptBottleneck: the CBL (|D| x |D|, no bias) followed by the FC layer (SPEC §2).

    a      = W_CBL psi            (B, |D|)  concept activations
    a      = TopK_k(a)            optional (`topk` = k > 0): keep each image's k largest
                                  activations, zero the rest (gradient flows through the kept ones)
    logits = W_F a + b            (B, |C|)

`topk` is not part of SPEC §2 (whose CBL losses do not make `a` sparse: see
heads/losses.py, "Sparsity"); it is an opt-in bottleneck that gives exactly k active concepts
per image, the way a TopK sparse autoencoder does. topk = 0 (the default) is SPEC's CBM.

`alpha_tilde` is the learnable log-scale of the contrastive / Gumbel CBL losses
(alpha_c = exp(alpha_tilde), thesis §4.4 footnote 6: initial value 2.659). It lives on the
model so it is saved with the weights and stepped by the CBL optimizer; the l1 loss ignores it.
"""

from __future__ import annotations

import torch
from torch import nn

ALPHA_TILDE_INIT = 2.659  # thesis §4.4 footnote: CBM contrastive scale log(alpha_c) at init


# identity: a = psi at step 0, so activation j starts as concept j's CLIP score (the premise
# of naming a_j by concept j in explanations); random: nn.Linear's default (published code).
CBL_INITS = {"identity": lambda w: nn.init.eye_(w), "random": lambda w: w}


class ConceptBottleneck(nn.Module):
    """CBL + FC over psi (B, |D|) -> logits (B, |C|)."""

    def __init__(
        self,
        n_concepts: int,
        n_classes: int,
        alpha_tilde: float = ALPHA_TILDE_INIT,
        cbl_init: str = "identity",
        topk: int = 0,
    ):
        super().__init__()
        if n_concepts < 1 or n_classes < 1:
            raise ValueError(
                f"ConceptBottleneck needs n_concepts >= 1 and n_classes >= 1, "
                f"got {n_concepts} and {n_classes}"
            )
        if isinstance(topk, bool) or not isinstance(topk, int) or not 0 <= topk < n_concepts:
            raise ValueError(
                f"topk must be an integer in [0, |D|) = [0, {n_concepts}) (0 keeps every "
                f"activation), got {topk!r}"
            )
        if cbl_init not in CBL_INITS:
            raise ValueError(f"cbl_init must be one of {sorted(CBL_INITS)}, got {cbl_init!r}")
        self.cbl = nn.Linear(n_concepts, n_concepts, bias=False)  # W_CBL
        CBL_INITS[cbl_init](self.cbl.weight)
        self.fc = nn.Linear(n_concepts, n_classes)  # W_F (+ bias)
        # zero start: every FC weight is learned (a random start stays visible in W_F and
        # hence in the explanations W_F[y] * a, since psi-scale inputs need only small steps)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.alpha_tilde = nn.Parameter(torch.tensor(float(alpha_tilde)))
        self.topk = topk

    @property
    def n_concepts(self) -> int:
        return self.cbl.in_features

    @property
    def n_classes(self) -> int:
        return self.fc.out_features

    def bottleneck(self, a: torch.Tensor) -> torch.Tensor:
        """W_CBL psi (B, |D|) -> what the final layer sees: TopK'd when topk > 0."""
        if not self.topk:
            return a
        values, idx = a.topk(self.topk, dim=1)
        return torch.zeros_like(a).scatter(1, idx, values)

    def activations(self, psi: torch.Tensor) -> torch.Tensor:
        """psi (B, |D|) -> concept activations a = W_CBL psi (B, |D|), TopK'd when topk > 0."""
        return self.bottleneck(self.cbl(psi))

    def forward(self, psi: torch.Tensor) -> torch.Tensor:
        """psi (B, |D|) -> class logits (B, |C|)."""
        return self.fc(self.activations(psi))
