"""TopK sparse autoencoder over unit CLIP image embeddings, in SAELens's tensor layout.

Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", the TopK recipe) with BatchTopK
(Bussmann et al. 2024) as an option:

    x_in = x - b_dec                 (B, E)  b_dec starts at the training mean: the centring
    pre  = x_in @ W_enc + b_enc      (B, F)  pre-activations, F = expansion * E latents
    z    = ReLU(TopK_k(pre))         (B, F)  at most k non-zeros per row (BatchTopK: B*k per
                                             batch while training, pre > threshold at inference)
    x̂    = z @ W_dec + b_dec         (B, E)  rows of W_dec have unit norm

b_dec is SAELens's `b_dec` with `apply_b_dec_to_input=True` (the "pre-bias" of Gao et al.):
subtracted from the input, added back to the output. Starting it at the training mean μ is
exactly "centre the input by μ, then learn a pre-bias from 0" (Adam's steps do not depend on a
constant offset of a parameter), and keeps the saved tensors SAELens-shaped.

Training never multiplies the dense (B, F) code matrix: the pre-activations are computed once
without autograd (optionally in bf16, for the selection only), the k selected entries per row
are recomputed exactly in fp32 with autograd (`gather_linear`, a sampled matmul), and the
decoder reads the k selected rows of W_dec (`sparse_decode`); their backward passes are sparse
too. Cost per row: one dense E x F product plus O(k E), instead of three dense products.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from torch import nn

# torch marks its CSR tensors "beta" with a warning on first use; the ops used here (sampled
# matmul, CSR @ dense) are tested against dense autograd in tests/test_sae_model.py
BETA_WARNING = "Sparse CSR tensor support is in beta state"


@contextlib.contextmanager
def _no_beta_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BETA_WARNING)
        yield


SELECTIONS = ("topk", "batchtopk")


class Pattern:
    """Which latents are selected in each row: a CSR pattern over a (B, F) code matrix.

    crow: (B+1,) int64 row offsets; col: (nnz,) int64 latent indices, increasing within a row.
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]):
        self.crow, self.col, self.shape = crow, col, shape
        self.row = torch.repeat_interleave(
            torch.arange(shape[0], device=col.device), crow[1:] - crow[:-1]
        )

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        with _no_beta_warning():
            return torch.sparse_csr_tensor(
                self.crow, self.col, values, self.shape, check_invariants=False
            )

    def coo_t(self, values: torch.Tensor) -> torch.Tensor:
        """The transposed pattern (F, B) as COO, for the weight gradients."""
        ind = torch.stack([self.col, self.row])
        shape = (self.shape[1], self.shape[0])
        return torch.sparse_coo_tensor(ind, values, shape, check_invariants=False)


def topk_pattern(pre: torch.Tensor, k: int) -> Pattern:
    """Each row's k largest entries of pre (B, F)."""
    b, f = pre.shape
    idx = pre.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    crow = torch.arange(0, b * k + 1, k, device=pre.device)
    return Pattern(crow, idx.reshape(-1), (b, f))


def batch_topk_pattern(pre: torch.Tensor, k: int) -> Pattern:
    """The B*k largest entries of the whole batch (BatchTopK): rows get a variable count."""
    b, f = pre.shape
    flat = pre.reshape(-1).topk(b * k, sorted=False).indices.sort().values  # row-major order
    counts = torch.bincount(flat // f, minlength=b)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return Pattern(crow, flat % f, (b, f))


PATTERNS = {"topk": topk_pattern, "batchtopk": batch_topk_pattern}


class _GatherLinear(torch.autograd.Function):
    """(x_in @ W_enc)[b, j] at the pattern's entries only: (nnz,) values, sparse backward."""

    @staticmethod
    def forward(ctx, x_in, w_enc, pattern):
        probe = pattern.csr(torch.zeros(len(pattern.col), dtype=x_in.dtype, device=x_in.device))
        out = torch.sparse.sampled_addmm(probe, x_in, w_enc, beta=0.0).values()
        ctx.save_for_backward(x_in, w_enc)
        ctx.pattern = pattern
        return out

    @staticmethod
    def backward(ctx, grad):
        x_in, w_enc = ctx.saved_tensors
        p = ctx.pattern
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = p.csr(grad) @ w_enc.T  # (B, E)
        if ctx.needs_input_grad[1]:
            grad_w = torch.sparse.mm(p.coo_t(grad), x_in).T  # (E, F)
        return grad_x, grad_w, None


class _SparseDecode(torch.autograd.Function):
    """z @ W_dec for z given by its values (nnz,) on the pattern: (B, E), sparse backward."""

    @staticmethod
    def forward(ctx, values, w_dec, pattern):
        ctx.save_for_backward(values, w_dec)
        ctx.pattern = pattern
        return pattern.csr(values) @ w_dec

    @staticmethod
    def backward(ctx, grad):
        values, w_dec = ctx.saved_tensors
        p = ctx.pattern
        grad_v = grad_w = None
        if ctx.needs_input_grad[0]:
            probe = p.csr(torch.zeros_like(values))
            grad_v = torch.sparse.sampled_addmm(probe, grad, w_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_w = torch.sparse.mm(p.coo_t(values), grad)  # (F, E)
        return grad_v, grad_w, None


def gather_linear(x_in, w_enc, pattern: Pattern) -> torch.Tensor:
    """(B, E), (E, F) -> (nnz,) entries of x_in @ w_enc on `pattern` (autograd: sparse)."""
    return _GatherLinear.apply(x_in, w_enc, pattern)


def sparse_decode(values, w_dec, pattern: Pattern) -> torch.Tensor:
    """(nnz,) codes on `pattern`, (F, E) -> (B, E) = z @ w_dec (autograd: sparse)."""
    return _SparseDecode.apply(values, w_dec, pattern)


class TopKSAE(nn.Module):
    """W_enc (E, F), b_enc (F,), W_dec (F, E) unit rows, b_dec (E,): SAELens names and shapes.

    `threshold` (a buffer) is the BatchTopK inference threshold (0 for plain TopK).
    """

    def __init__(self, embed_dim: int, n_latents: int, k: int, selection: str = "topk"):
        super().__init__()
        if embed_dim < 1 or n_latents < 1:
            raise ValueError(f"embed_dim and n_latents must be >= 1, got {embed_dim}, {n_latents}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_latents:
            raise ValueError(f"k must be an integer in [1, {n_latents}] (latents), got {k!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
        self.embed_dim, self.n_latents, self.k, self.selection = embed_dim, n_latents, k, selection
        self.W_enc = nn.Parameter(torch.zeros(embed_dim, n_latents))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(torch.zeros(n_latents, embed_dim))
        self.b_dec = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("threshold", torch.zeros(()))
        self.centring_mean: torch.Tensor | None = None  # μ of the training split (config.json)

    @torch.no_grad()
    def tied_init(self, mean: torch.Tensor | None, generator: torch.Generator) -> None:
        """Random unit decoder rows, W_enc = W_dec.T (tied), b_enc = 0, b_dec = mean (or 0)."""
        w = torch.randn(self.n_latents, self.embed_dim, generator=generator)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.copy_(mean if mean is not None else torch.zeros(self.embed_dim))

    # -- inference: dense pre-activations, fp32 --------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, F) fp32 pre-activations (x - b_dec) @ W_enc + b_enc."""
        return torch.addmm(self.b_enc, x.float() - self.b_dec, self.W_enc)

    def codes(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Dense codes z (B, F): ReLU of each row's top-k (k=None: the model's rule; a
        BatchTopK model then keeps pre > threshold, as at inference)."""
        if k is None and self.selection == "batchtopk":
            return pre * (pre > self.threshold.clamp_min(0.0))
        values, indices = self.topk_codes(pre, self.k if k is None else k)
        return torch.zeros_like(pre).scatter_(1, indices, values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Dense codes (B, F) -> reconstruction (B, E); on CPU only the non-zeros are read."""
        if z.device.type == "cpu":
            with _no_beta_warning():
                sparse = z.to_sparse_csr()
            return sparse @ self.W_dec + self.b_dec
        return torch.addmm(self.b_dec, z, self.W_dec)

    def topk_codes(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's top-k as (values (B, k) after ReLU, latent indices (B, k))."""
        top = pre.topk(k, dim=1)
        return top.values.clamp_min(0.0), top.indices

    def decode_topk(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x̂ (B, E) from (B, k) values and latent indices: reads k rows of W_dec per row."""
        out = nn.functional.embedding_bag(
            indices, self.W_dec, per_sample_weights=values, mode="sum"
        )
        return out + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E) -> (codes (B, F), reconstruction (B, E)), inference rule."""
        z = self.codes(self.pre_activations(x))
        return z, self.decode(z)

    # -- training: selected entries only --------------------------------------------------
    def train_forward(self, x: torch.Tensor, select_dtype: torch.dtype = torch.float32):
        """One training batch (B, E) fp32 -> (pattern, z values (nnz,), x̂ (B, E), pre (B, F)).

        The selection (which k latents) reads pre-activations computed without autograd in
        `select_dtype` (bf16: ~2.4x faster on CPUs with AMX and on GPUs); the selected values
        are recomputed in fp32 with autograd, so the values and gradients are exact.
        """
        x_in = x - self.b_dec
        with torch.no_grad():
            pre = torch.addmm(
                self.b_enc.to(select_dtype), x_in.to(select_dtype), self.W_enc.to(select_dtype)
            ).float()
        pattern = PATTERNS[self.selection](pre, self.k)
        vals = gather_linear(x_in, self.W_enc, pattern) + self.b_enc[pattern.col]
        z = torch.relu(vals)
        return pattern, z, sparse_decode(z, self.W_dec, pattern) + self.b_dec, pre

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rows of W_dec back to unit norm (after every optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the component of each W_dec row's gradient parallel to the row (before the
        step), so the step moves along the unit sphere instead of fighting the renorm."""
        g = self.W_dec.grad
        if g is not None:
            g.sub_((g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec)


def aux_loss(sae: TopKSAE, x_in: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
             k_aux: int, matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """AuxK (Gao et al. §A.2): the top-k_aux pre-activations of the dead latents reconstruct
    the residual e = x - x̂ of the live ones; returns ‖e - ê‖² / ‖e‖² over the batch.

    x_in: (B, E) = x - b_dec; residual: (B, E) = x - x̂, detached; dead: (n_dead,) latent
    indices. ê = z_aux @ W_dec[dead] carries no b_dec: the residual already has it removed,
    adding it again (decoding with `decode`) would count the pre-bias twice. The values are
    the raw pre-activations, no ReLU (as SAELens does): a dead latent's pre-activations are
    usually all negative, and through a ReLU it would get no gradient at all (measured on the
    real-text benchmark at lr 1e-2: 374 latents dead at the end with a ReLU, 1 without). The
    dense product runs over the dead latents only.
    """
    if len(dead) == 0 or k_aux < 1:
        return residual.new_zeros(())
    w_enc = sae.W_enc[:, dead]  # (E, n_dead)
    pre = (x_in.to(matmul_dtype) @ w_enc.to(matmul_dtype)).float() + sae.b_enc[dead]
    top = pre.topk(min(k_aux, len(dead)), dim=1)
    z_aux = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    e_hat = (z_aux.to(matmul_dtype) @ sae.W_dec[dead].to(matmul_dtype)).float()
    return (residual - e_hat).pow(2).sum() / residual.pow(2).sum().clamp_min(1e-12)


def default_k_aux(embed_dim: int, n_latents: int) -> int:
    """E / 2 (Gao et al.'s heuristic; SAELens and EleutherAI use the same), at most F."""
    return max(1, min(n_latents, math.ceil(embed_dim / 2)))
