"""The TopK SAE's math: sparse training ops equal dense autograd, AuxK, decoder-norm invariants,
tied init, BatchTopK (heads/sae/model.py)."""

import pytest
import torch

from clipcbm.heads.sae.model import (
    TopKSAE,
    aux_loss,
    batch_topk_pattern,
    default_k_aux,
    gather_linear,
    sparse_decode,
    topk_pattern,
)

E, F, K = 12, 48, 4


def _sae(selection="topk", seed=0, mean=None) -> TopKSAE:
    sae = TopKSAE(E, F, K, selection)
    sae.tied_init(mean, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # away from the tied start, so W_enc and W_dec differ
        g = torch.Generator().manual_seed(seed + 1)
        sae.W_enc.add_(0.2 * torch.randn(E, F, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(F, generator=g))
        sae.b_dec.copy_(0.3 * torch.randn(E, generator=g))
    return sae


def _x(n=23, seed=5) -> torch.Tensor:
    x = torch.randn(n, E, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def _dense_reference(sae, x, mask):
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    z = torch.where(mask, torch.relu(pre), torch.zeros(()))
    return z, z @ sae.W_dec + sae.b_dec


@pytest.mark.parametrize("selection", ["topk", "batchtopk"])
def test_sparse_training_forward_and_gradients_equal_dense_autograd(selection):
    sae, x = _sae(selection), _x()
    pattern, z, x_hat, _ = sae.train_forward(x)
    mask = torch.zeros(len(x), F, dtype=torch.bool)
    mask[pattern.row, pattern.col] = True
    z_ref, x_ref = _dense_reference(sae, x, mask)
    torch.testing.assert_close(x_hat, x_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, z_ref[pattern.row, pattern.col], atol=1e-6, rtol=1e-6)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    got = torch.autograd.grad((x_hat * g).sum(), params)
    want = torch.autograd.grad((x_ref * g).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_topk_selects_each_rows_k_largest_and_batchtopk_the_batchs():
    pre = torch.randn(10, F, generator=torch.Generator().manual_seed(1))
    p = topk_pattern(pre, K)
    assert p.crow.tolist() == list(range(0, 10 * K + 1, K))
    for b in range(10):
        cols = p.col[p.crow[b] : p.crow[b + 1]]
        assert cols.tolist() == sorted(pre[b].topk(K).indices.tolist())
    q = batch_topk_pattern(pre, K)
    assert len(q.col) == 10 * K
    kept = pre[q.row, q.col]
    assert kept.min() >= pre.flatten().topk(10 * K).values.min()
    assert (q.crow[1:] - q.crow[:-1]).sum() == 10 * K


def test_gather_linear_and_sparse_decode_match_their_dense_forms():
    x = torch.randn(7, E, requires_grad=True)
    w = torch.randn(E, F, requires_grad=True)
    pre = (x @ w).detach()
    p = topk_pattern(pre, 3)
    vals = gather_linear(x, w, p)
    torch.testing.assert_close(vals, (x @ w)[p.row, p.col])
    wd = torch.randn(F, E, requires_grad=True)
    v = torch.rand(len(p.col), requires_grad=True)
    dense = torch.zeros(7, F).index_put((p.row, p.col), v)
    torch.testing.assert_close(sparse_decode(v, wd, p), dense @ wd)


def test_inference_forward_equals_the_training_forward_in_fp32():
    sae, x = _sae(), _x()
    _, _, x_hat, _ = sae.train_forward(x)
    z, recon = sae(x)
    torch.testing.assert_close(recon, x_hat.detach(), atol=1e-5, rtol=1e-5)
    assert ((z > 0).sum(1) <= K).all()
    values, idx = sae.topk_codes(sae.pre_activations(x), K)
    torch.testing.assert_close(sae.decode_topk(values, idx), recon, atol=1e-5, rtol=1e-5)


def test_bf16_selection_keeps_exact_fp32_values():
    sae, x = _sae(), _x()
    p, z, _, _ = sae.train_forward(x, torch.bfloat16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(z, torch.relu(pre[p.row, p.col]).detach(), atol=1e-6, rtol=1e-6)


def test_tied_init_unit_decoder_rows_and_centring_mean():
    sae = TopKSAE(E, F, K)
    mean = torch.linspace(-1, 1, E)
    sae.tied_init(mean, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.equal(sae.b_dec, mean) and not sae.b_enc.any()
    again = TopKSAE(E, F, K)
    again.tied_init(mean, torch.Generator().manual_seed(0))
    assert torch.equal(again.W_dec, sae.W_dec)  # seeded


def test_decoder_step_keeps_unit_rows_and_removes_the_parallel_gradient():
    sae, x = _sae(), _x()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        _, _, x_hat, _ = sae.train_forward(x)
        opt.zero_grad()
        (x - x_hat).pow(2).sum().backward()
        sae.remove_parallel_grad()
        parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
        torch.testing.assert_close(parallel, torch.zeros(F), atol=1e-5, rtol=0)
        opt.step()
        sae.normalize_decoder()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F), atol=1e-6, rtol=0)


def test_auxk_is_the_normalised_residual_error_of_the_top_dead_pre_activations():
    sae, x = _sae(), _x()
    _, _, x_hat, _ = sae.train_forward(x)
    residual = (x - x_hat).detach()
    dead = torch.tensor([1, 5, 7, 20, 33])
    x_in = x - sae.b_dec
    got = aux_loss(sae, x_in, residual, dead, k_aux=2)
    # by hand: the two largest raw pre-activations among the dead latents (no ReLU), decoded
    # without b_dec
    pre = (x_in @ sae.W_enc + sae.b_enc)[:, dead]
    top = pre.topk(2, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    e_hat = z @ sae.W_dec[dead]
    want = (residual - e_hat).pow(2).sum() / residual.pow(2).sum()
    torch.testing.assert_close(got, want)


def test_auxk_counts_the_pre_bias_once():
    """Shifting the inputs and b_dec by the same vector moves x̂ with them: the residual, and so
    the AuxK loss, must not change. Decoding the dead latents with b_dec would break this."""
    sae, x = _sae(), _x()
    dead = torch.arange(0, F, 3)

    def loss(shift):
        with torch.no_grad():
            sae.b_dec.add_(shift)
        xs = x + shift
        _, _, x_hat, _ = sae.train_forward(xs)
        out = aux_loss(sae, xs - sae.b_dec, (xs - x_hat).detach(), dead, k_aux=3)
        with torch.no_grad():
            sae.b_dec.sub_(shift)
        return out

    base = loss(torch.zeros(E))
    torch.testing.assert_close(loss(torch.full((E,), 5.0)), base, atol=1e-4, rtol=1e-4)


def test_auxk_trains_only_dead_latents_and_is_zero_without_them():
    sae, x = _sae(), _x()
    _, _, x_hat, _ = sae.train_forward(x)
    residual = (x - x_hat).detach()
    assert aux_loss(sae, x - sae.b_dec, residual, torch.tensor([], dtype=torch.long), 4) == 0
    dead = torch.tensor([2, 9])
    loss = aux_loss(sae, x - sae.b_dec, residual, dead, k_aux=10)  # k_aux > dead: all dead
    g_dec, g_enc = torch.autograd.grad(loss, [sae.W_dec, sae.W_enc])
    live = torch.ones(F, dtype=torch.bool)
    live[dead] = False
    assert g_dec[dead].abs().sum() > 0 and g_enc[:, dead].abs().sum() > 0
    assert not g_dec[live].any() and not g_enc[:, live].any()


def test_batchtopk_inference_uses_the_threshold():
    sae, x = _sae("batchtopk"), _x()
    sae.threshold.fill_(0.05)
    pre = sae.pre_activations(x)
    torch.testing.assert_close(sae.codes(pre), pre * (pre > 0.05))
    # the k-sweep still applies a per-row TopK to a BatchTopK model
    assert ((sae.codes(pre, k=2) > 0).sum(1) <= 2).all()


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="k must be an integer in"):
        TopKSAE(E, F, F + 1)
    with pytest.raises(ValueError, match="selection must be one of"):
        TopKSAE(E, F, K, "jumprelu")
    assert default_k_aux(768, 6144) == 384 and default_k_aux(16, 4) == 4


def test_auxk_raises_latents_whose_pre_activations_are_all_negative():
    """Raw pre-activations (no ReLU): a latent that is negative on every row still learns; a
    descent step on AuxK raises its bias (with a ReLU its gradient would be exactly 0)."""
    sae, x = _sae(), _x()
    dead = torch.tensor([3, 11, 40])
    with torch.no_grad():
        sae.b_enc[dead] = -2.0
    _, _, x_hat, _ = sae.train_forward(x)
    assert ((x - sae.b_dec) @ sae.W_enc + sae.b_enc)[:, dead].max() < 0
    loss = aux_loss(sae, x - sae.b_dec, (x - x_hat).detach(), dead, k_aux=2)
    (g,) = torch.autograd.grad(loss, [sae.b_enc])
    assert (g[dead] < 0).all()
