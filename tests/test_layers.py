"""netvlad.layers against naive float64 oracles written from the MATLAB layers' maths (loops, no
vectorisation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from netvlad.layers import (
    AvgPool,
    MaxPool,
    Method,
    NetVLAD,
    UninitializedError,
    build_head,
    kmeans,
    l2n_eps_inside,
    parse_method,
    whole_l2n,
)


def oracle_netvlad(x, w, b, c, pre_l2, intra):
    """Loop over images, positions and clusters in float64 numpy; returns B×(D·K), index d·K+k."""
    x, w, c = (np.asarray(t, dtype=np.float64) for t in (x, w, c))
    bsz, d, h, wd = x.shape
    k = c.shape[0]
    out = np.zeros((bsz, d * k))
    for bi in range(bsz):
        v = np.zeros((k, d))
        for i in range(h):
            for j in range(wd):
                xi = x[bi, :, i, j].copy()
                if pre_l2:
                    xi = xi / math.sqrt(1e-12 + sum(t * t for t in xi))
                s = np.array([w[kk] @ xi + (0.0 if b is None else float(b[kk])) for kk in range(k)])
                e = np.exp(s - s.max())
                a = e / e.sum()
                for kk in range(k):
                    v[kk] += a[kk] * (xi - c[kk])
        if intra:
            for kk in range(k):
                v[kk] /= math.sqrt(1e-12 + (v[kk] ** 2).sum())
        flat = np.zeros(d * k)
        for kk in range(k):
            for dd in range(d):
                flat[dd * k + kk] = v[kk, dd]
        out[bi] = flat / (math.sqrt((flat**2).sum()) + 1e-12)
    return out


def _ready(layer: NetVLAD, seed=0) -> NetVLAD:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.centroids.copy_(torch.randn(layer.centroids.shape, generator=g))
        layer.assignment.weight.copy_(torch.randn(layer.assignment.weight.shape, generator=g) * 2)
        if layer.assignment.bias is not None:
            layer.assignment.bias.copy_(torch.randn(layer.assignment.bias.shape, generator=g))
        layer.initialized.fill_(True)
    return layer


@pytest.mark.parametrize("vladv2", [False, True])
@pytest.mark.parametrize("intra", [False, True])
@pytest.mark.parametrize("pre_l2", [False, True])
def test_netvlad_matches_loop_oracle(vladv2, intra, pre_l2):
    layer = _ready(NetVLAD(5, 4, vladv2=vladv2, intra_norm=intra, pre_l2=pre_l2), seed=1).double()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    got = layer(x).detach().numpy()
    bias = None if layer.assignment.bias is None else layer.assignment.bias.detach().numpy()
    want = oracle_netvlad(x.numpy(), layer.assignment.weight.detach().view(4, 5).numpy(), bias,
                          layer.centroids.detach().numpy(), pre_l2, intra)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # float32 path and channels_last input agree with the oracle too
    layer32 = layer.float()
    got32 = layer32(x.float().contiguous(memory_format=torch.channels_last)).detach().numpy()
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-5)


def test_flat_order_is_d_times_k_plus_k():
    # One position, a one-hot assignment to cluster 1, zero centres: V_1 = x, other V_k = 0.
    d, k = 3, 4
    layer = NetVLAD(d, k, intra_norm=False)
    with torch.no_grad():
        layer.centroids.zero_()
        layer.assignment.weight.zero_()
        layer.assignment.weight[1] = 0  # logits only from the big constant channel below
        layer.initialized.fill_(True)
    x = torch.tensor([3.0, 4.0, 12.0]).view(1, d, 1, 1)
    with torch.no_grad():
        layer.assignment.weight[1, 2, 0, 0] = 100.0  # x[2] = 12 → cluster 1 wins by 1200
    out = layer(x)[0]
    expected = torch.zeros(d * k)
    for dd in range(d):
        expected[dd * k + 1] = x[0, dd, 0, 0] / 13.0
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # positions 1, 1+K, 1+2K (0-based: 1, 5, 9) hold cluster 1: MATLAB's cluster-fastest layout
    assert torch.nonzero(out).flatten().tolist() == [1, 5, 9]


def test_torch_order_is_k_times_d_plus_d():
    # The same layer in the PyTorch projects' layout: element (k, d) at k·D + d, i.e. the MATLAB
    # vector read as a D×K matrix and transposed.
    d, k = 5, 4
    layer = _ready(NetVLAD(d, k, pre_l2=True), seed=3)
    torch_layer = NetVLAD(d, k, pre_l2=True, order="torch")
    torch_layer.load_state_dict(layer.state_dict())
    x = torch.randn(2, d, 3, 3)
    with torch.no_grad():
        matlab, cluster_major = layer(x), torch_layer(x)
    want = matlab.view(2, d, k).transpose(1, 2).reshape(2, k * d)
    torch.testing.assert_close(cluster_major, want, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="unknown VLAD order 'fortran'; choose from matlab, torch"):
        NetVLAD(d, k, order="fortran")


def test_gradcheck_float64():
    for vladv2 in (False, True):
        layer = _ready(NetVLAD(3, 2, vladv2=vladv2, intra_norm=True, pre_l2=True), seed=2).double()
        x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)
        # and w.r.t. every parameter (assignment weight, bias for v2, centroids)
        names = ["assignment.weight", "centroids"] + (["assignment.bias"] if vladv2 else [])
        params = dict(layer.named_parameters())
        ps = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

        x0 = x.detach()

        def g(*ps, names=names, layer=layer, x0=x0):
            return torch.func.functional_call(layer, dict(zip(names, ps)), (x0,))

        assert torch.autograd.gradcheck(g, ps, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [MaxPool, AvgPool])
def test_pool_heads_match_oracle_and_gradcheck(cls):
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    for pre_l2 in (False, True):
        head = cls(4, pre_l2=pre_l2)
        xn = x / torch.sqrt(1e-12 + (x**2).sum(1, keepdim=True)) if pre_l2 else x
        pooled = xn.flatten(2).max(2).values if cls is MaxPool else xn.flatten(2).mean(2)
        want = pooled / (pooled.norm(dim=1, keepdim=True) + 1e-12)
        torch.testing.assert_close(head(x), want)
        assert head.out_dim == 4
    assert torch.autograd.gradcheck(AvgPool(4, pre_l2=True), (x.clone().requires_grad_(True),))


def test_epsilon_placement():
    # zero stays zero with a finite gradient (eps inside the sqrt: 0/sqrt(1e-12))
    z = torch.zeros(1, 3, requires_grad=True)
    y = l2n_eps_inside(z, dim=1)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(1, 3)) and torch.isfinite(z.grad).all()
    assert torch.equal(whole_l2n(torch.zeros(2, 5)), torch.zeros(2, 5))
    # tiny vectors tell inside from outside: with eps inside the sqrt, ‖x‖ = 1e-6 gives 1/sqrt(2);
    # with eps outside, ‖x‖ = 1e-12 gives 1/2
    x = torch.tensor([[1e-6, 0.0]], dtype=torch.float64)
    assert l2n_eps_inside(x, dim=1)[0, 0].item() == pytest.approx(1 / math.sqrt(2), rel=1e-9)
    assert whole_l2n(x)[0, 0].item() == pytest.approx(1 / (1 + 1e-6), rel=1e-12)
    x = torch.tensor([[1e-12, 0.0]], dtype=torch.float64)
    assert whole_l2n(x)[0, 0].item() == pytest.approx(0.5, rel=1e-9)
    assert l2n_eps_inside(x, dim=1)[0, 0].item() == pytest.approx(1e-6, rel=1e-6)


def test_norm_gradients_float64():
    # l2n_eps_inside has a hand-written backward; check it numerically
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    for dim in (0, 1, 2):
        assert torch.autograd.gradcheck(lambda t, dim=dim: l2n_eps_inside(t, dim), (x,))
    # it is once-differentiable: a second derivative is refused, never silently wrong
    (g,) = torch.autograd.grad(l2n_eps_inside(x, 1).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        g.sum().backward()
    assert torch.autograd.gradcheck(whole_l2n, (torch.randn(3, 6, dtype=torch.float64, requires_grad=True),))
    # same values with and without autograd
    torch.testing.assert_close(l2n_eps_inside(x, 1), l2n_eps_inside(x.detach(), 1), rtol=0, atol=1e-15)


def test_parse_method_valid_and_any_order():
    assert parse_method("vlad_preL2_intra") == Method("vlad", True, True)
    assert parse_method("intra_preL2_vlad") == Method("vlad", True, True)
    assert parse_method("vlad") == Method("vlad", False, False)
    assert parse_method("vladv2_preL2_intra") == Method("vladv2", True, True)
    assert parse_method("max_preL2") == Method("max", True, False)
    assert parse_method("avg") == Method("avg", False, False)
    for s in ("vlad_preL2_intra", "vlad_preL2", "vlad", "vladv2_preL2_intra", "max", "avg", "max_preL2"):
        assert parse_method(s).name == s


@pytest.mark.parametrize(
    "bad, match",
    [
        ("vlad_foo", r"unsupported token\(s\) \['foo'\].*allowed tokens: one of max\|avg\|vlad\|vladv2"),
        ("max_intra", r"unsupported token\(s\) \['intra'\]"),
        ("preL2", r"no pooling token.*allowed tokens"),
        ("max_avg", r"several pooling tokens"),
        ("vlad_preL2_preL2", r"unsupported token\(s\) \['preL2'\]"),
        ("VLAD", r"no pooling token"),
    ],
)
def test_parse_method_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_method(bad)


def test_build_head():
    h = build_head("vlad_preL2_intra", 6, num_clusters=3)
    assert isinstance(h, NetVLAD) and h.pre_l2 and h.intra_norm and not h.vladv2 and h.out_dim == 18
    assert h.assignment.bias is None
    h2 = build_head("vladv2", 6, num_clusters=3)
    assert h2.vladv2 and h2.assignment.bias is not None and not h2.intra_norm
    assert isinstance(build_head("max_preL2", 6), MaxPool) and build_head("avg", 6).out_dim == 6


def test_uninitialised_refuses_forward():
    layer = NetVLAD(4, 2)
    with pytest.raises(UninitializedError, match="never initialised.*netvlad init MODEL"):
        layer(torch.randn(1, 4, 2, 2))
    sd = _ready(NetVLAD(4, 2)).state_dict()
    assert "initialized" in sd
    layer.load_state_dict(sd)
    assert layer(torch.randn(1, 4, 2, 2)).shape == (1, 8)


def test_autocast_bf16_close_to_fp32():
    layer = _ready(NetVLAD(16, 8, pre_l2=True), seed=3)
    with torch.no_grad():
        layer.assignment.weight.mul_(0.3)
    x = torch.randn(3, 16, 6, 7)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    # only the input's bf16 rounding remains (~3 significant digits), the sums run in float32
    torch.testing.assert_close(out, ref, atol=4e-3, rtol=0)
    cos = torch.nn.functional.cosine_similarity(out, ref).min().item()
    assert cos > 0.999
    # a bf16 module (weights too) still computes in float32
    out2 = _ready(NetVLAD(16, 8, pre_l2=True), seed=3).bfloat16()(x.bfloat16())
    assert out2.dtype == torch.float32 and torch.isfinite(out2).all()


def _clustered(k=4, d=8, per=200, spread=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    centres = centres / centres.norm(dim=1, keepdim=True)
    pts = centres.repeat_interleave(per, 0) + spread * torch.randn(k * per, d, generator=g)
    return centres, pts[torch.randperm(len(pts), generator=g)]


def _match(found, true):
    # each true centre has a found centre nearby
    dist = torch.cdist(true.double(), found.double())
    return dist.min(1).values.max().item()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_recovers_centres(backend):
    true, pts = _clustered()
    found = kmeans(pts, 4, niter=100, seed=43, backend=backend)
    assert found.shape == (4, 8)
    assert _match(found, true) < 0.01


@pytest.mark.parametrize("vladv2", [False, True])
def test_init_from_descriptors_alpha_by_hand(vladv2):
    true, pts = _clustered(seed=1)
    layer = NetVLAD(8, 4, vladv2=vladv2, intra_norm=True, pre_l2=True)
    alpha = layer.init_from_descriptors(pts, seed=43, backend="torch")
    c = layer.centroids.detach().double()
    assert _match(c, true) < 0.01
    x = pts.double()
    if vladv2:
        sorted_rows = (torch.cdist(x, c) ** 2).sort(1).values
        want = -math.log(0.01) / (sorted_rows[:, 1] - sorted_rows[:, 0]).mean().item()
        torch.testing.assert_close(layer.assignment.weight.detach().view(4, 8).double(), 2 * want * c,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.assignment.bias.detach().double(), -want * (c**2).sum(1),
                                   rtol=1e-5, atol=1e-5)
    else:
        cn = c / (c.norm(dim=1, keepdim=True) + 1e-12)
        dots = (x @ cn.T).sort(1, descending=True).values
        want = -math.log(0.01) / (dots[:, 0] - dots[:, 1]).mean().item()
        torch.testing.assert_close(layer.assignment.weight.detach().view(4, 8).double(), want * cn,
                                   rtol=1e-5, atol=1e-5)
        assert layer.assignment.bias is None
    assert alpha == pytest.approx(want, rel=1e-6)
    assert bool(layer.initialized)
    # the soft-assignment is then sharp: the second cluster gets ~1% of the best on average
    out = layer(pts.T.reshape(1, 8, 1, -1))
    assert torch.isfinite(out).all()


def test_init_from_descriptors_errors():
    layer = NetVLAD(8, 4)
    with pytest.raises(ValueError, match="at least K=4 descriptors"):
        layer.init_from_descriptors(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"expects N×8"):
        layer.init_from_descriptors(torch.randn(10, 7))
    with pytest.raises(ValueError, match="unknown k-means backend"):
        layer.init_from_descriptors(torch.randn(10, 8), backend="yael")


def test_no_residual_tensor_in_graph():
    # The autograd graph must not hold a B×K×D×N tensor: check the largest saved tensor.
    layer = _ready(NetVLAD(32, 16, pre_l2=True))
    x = torch.randn(2, 32, 10, 10, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert max(sizes) < 2 * 16 * 32 * 100 / 4  # residual tensor would be B·K·D·N = 102400
