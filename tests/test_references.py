"""Self-checks of the independent references (tests/reference_torch.py, reference_numpy.py)."""

import math

import numpy as np
import pytest
import torch

try:  # `python -m pytest` from the repo root, or tests/ being a package
    from tests.reference_numpy import (group_scores_np, keep_per_group_np, num_groups_np,
                                       select_group_dynamic_np)
    from tests.reference_torch import (TorchFluxViT, count_params, init_perturbed_,
                                       torch_resize_pos)
except ImportError:  # plain `pytest` with rootdir-less prepend import mode
    from reference_numpy import (group_scores_np, keep_per_group_np, num_groups_np,
                                 select_group_dynamic_np)
    from reference_torch import TorchFluxViT, count_params, init_perturbed_, torch_resize_pos

TINY = dict(embed_dim=32, depth=2, num_heads=2, attn_pool_num_heads=4, clip_embed_dim=48,
            num_classes=5, num_frames=4, img_size=56)


def tiny_model(seed=0, **kw):
    torch.manual_seed(0)
    m = TorchFluxViT(**{**TINY, **kw}).eval()
    return init_perturbed_(m, seed)


def video(B, T, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, T, H, W, generator=g)


# ------------------------------------------------------------------ SPEC A.2 state_dict
def expected_small_shapes(C=384, depth=12, hidden=1536, clip=768, ncls=400, t0=24, g0=18):
    """Enumerated by hand from SPEC A.2 (order = state_dict order)."""
    s = [("cls_token", (1, 1, C)), ("pos_embed", (1, 1 + t0 * g0 * g0, C)),
         ("gpe_proj.depthwise_conv.weight", (C, 1, 1, 1, 1)), ("gpe_proj.depthwise_conv.bias", (C,)),
         ("patch_embed.proj.weight", (C, 3, 1, 14, 14)), ("patch_embed.proj.bias", (C,)),
         ("patch_embed.norm.weight", (C,)), ("patch_embed.norm_before.weight", (588,))]
    for i in range(depth):
        b = f"blocks.{i}."
        s += [(b + "norm1.weight", (C,)), (b + "attn.qkv.weight", (3 * C, C)),
              (b + "attn.proj.weight", (C, C)), (b + "attn.proj.bias", (C,)),
              (b + "attn.lpe.depthwise_conv.weight", (C, 1, 1, 1, 1)),
              (b + "attn.lpe.depthwise_conv.bias", (C,)),
              (b + "attn.q_norm.weight", (C,)), (b + "attn.k_norm.weight", (C,)),
              (b + "ls1.gamma", (C,)), (b + "norm2.weight", (C,)),
              (b + "mlp.fc1.weight", (hidden, C)), (b + "mlp.fc1.bias", (hidden,)),
              (b + "mlp.fc2.weight", (C, hidden)), (b + "mlp.fc2.bias", (C,)),
              (b + "ls2.gamma", (C,))]
    for j in range(3):
        p = f"clip_projector.{j}."
        for n in ("q", "k", "v"):
            s += [(p + f"norm1_{n}.weight", (C,)), (p + f"norm1_{n}.bias", (C,))]
        s += [(p + "cross_attn.q_bias", (C,)), (p + "cross_attn.k_bias", (C,)),
              (p + "cross_attn.v_bias", (C,)), (p + "cross_attn.q.weight", (C, C)),
              (p + "cross_attn.k.weight", (C, C)), (p + "cross_attn.v.weight", (C, C)),
              (p + "cross_attn.proj.weight", (clip, C)), (p + "cross_attn.proj.bias", (clip,))]
    for j in range(3):
        s += [(f"head.{j}.weight", (ncls, clip)), (f"head.{j}.bias", (ncls,))]
    s += [("fc_norm.weight", (clip,)), ("fc_norm.bias", (clip,))]
    for j in range(2):
        d = f"final_clip_decoder_for_projs.{j}."
        s += [(d + "head.weight", (clip, clip)), (d + "head.bias", (clip,)),
              (d + "norm.weight", (clip,)), (d + "norm.bias", (clip,))]
    return s


def test_state_dict_small_matches_spec():
    with torch.device("meta"):
        m = TorchFluxViT(embed_dim=384, depth=12, num_heads=6, attn_pool_num_heads=16,
                         clip_embed_dim=768, num_classes=400, num_frames=24, img_size=252)
    sd = m.state_dict()
    got = [(k, tuple(v.shape)) for k, v in sd.items()]
    assert got == expected_small_shapes()
    assert len(sd) == 246
    assert count_params(sd) == 28_845_948
    assert count_params(sd) - sd["pos_embed"].numel() == 25_859_580
    assert count_params({k: v for k, v in sd.items() if k.startswith("blocks.0.")}) == 1_774_848
    assert count_params({k: v for k, v in sd.items() if k.startswith("clip_projector.")}) == 2_224_512
    assert count_params({k: v for k, v in sd.items() if k.startswith("head.")}) == 922_800
    assert count_params({k: v for k, v in sd.items() if k.startswith("final_clip")}) == 1_184_256


def test_state_dict_base_count():
    with torch.device("meta"):
        m = TorchFluxViT(embed_dim=768, depth=12, num_heads=12, attn_pool_num_heads=16,
                         clip_embed_dim=768, num_classes=400, num_frames=32, img_size=280)
    sd = m.state_dict()
    assert len(sd) == 246
    assert count_params(sd) == 104_560_380
    assert count_params(sd) - sd["pos_embed"].numel() == 94_729_212


# ------------------------------------------------------------------ B.1 patch embed
def test_patch_embed_equals_patchify_rmsnorm_dense():
    m = tiny_model(seed=1)
    x = video(2, 4, 56, 42, seed=3)
    E = m.patch_embed(x).detach().numpy()  # [B, T, L, C]
    xn = x.numpy()
    B, _, T, H, W = xn.shape
    # manual patchify with order (kt, py, px, rgb), rgb fastest
    P = xn.reshape(B, 3, T, H // 14, 14, W // 14, 14).transpose(0, 2, 3, 5, 4, 6, 1)
    P = P.reshape(B, T, (H // 14) * (W // 14), 588).astype(np.float64)
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in m.state_dict().items()}
    P = P / np.sqrt((P ** 2).mean(-1, keepdims=True) + 1e-6) * sd["patch_embed.norm_before.weight"]
    Wd = sd["patch_embed.proj.weight"].transpose(2, 3, 4, 1, 0).reshape(588, -1)  # SPEC A.3 mapping
    Y = P @ Wd + sd["patch_embed.proj.bias"]
    Y = Y / np.sqrt((Y ** 2).mean(-1, keepdims=True) + 1e-6) * sd["patch_embed.norm.weight"]
    np.testing.assert_allclose(E, Y, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ B.2 numpy selector
def test_numpy_k_formula_spec_examples():
    assert keep_per_group_np(24, 196, budget=3072) == 767  # 3068 kept in total
    assert num_groups_np(24) * keep_per_group_np(24, 196, budget=3072) == 3068
    assert keep_per_group_np(24, 256, budget=2048) == 511
    assert keep_per_group_np(8, 16, budget=1000) == 2 * 16  # N <= budget -> r = 0
    assert keep_per_group_np(8, 16, budget=64, keep_per_group=7) == 7
    assert [num_groups_np(t) for t in (2, 6, 8, 10, 12, 24)] == [1, 2, 4, 2, 4, 4]
    # SPEC B.2: totals G*k over the C.1 fine-tuning grid (41 (T, R) pairs), N > budget
    res = {6: (280, 336), 8: (224, 336), 10: (224, 336), 12: (196, 308), 14: (196, 280),
           16: (168, 252), 18: (168, 252), 20: (168, 224), 22: (140, 224), 24: (140, 224)}
    pairs = [(T, R) for T, (a, b) in res.items() for R in range(a, b + 1, 28)]
    assert len(pairs) == 41
    want = {1024: {1020, 1022, 1024}, 2048: {2044, 2046, 2048}, 3072: {3068, 3072}}
    for budget, totals in want.items():
        got = {num_groups_np(T) * keep_per_group_np(T, (R // 14) ** 2, budget=budget)
               for T, R in pairs if T * (R // 14) ** 2 > budget}
        assert got == totals


def test_group_scores_frame0_copies_frame1():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)  # G=2, T'=3
    s = group_scores_np(E).reshape(2, 6, 5)
    for g in range(2):
        f0 = 3 * g
        np.testing.assert_allclose(s[:, f0 + 1], np.linalg.norm(E[:, f0 + 1] - E[:, f0], axis=-1), rtol=1e-6)
        np.testing.assert_allclose(s[:, f0 + 2], np.linalg.norm(E[:, f0 + 2] - E[:, f0 + 1], axis=-1), rtol=1e-6)
        np.testing.assert_array_equal(s[:, f0], s[:, f0 + 1])
    # no cross-group difference is used: the first frame of group 1 ignores frame 2
    assert not np.allclose(s[:, 3], np.linalg.norm(E[:, 3] - E[:, 2], axis=-1))


@pytest.mark.parametrize("T", [2, 6, 8, 12])
def test_numpy_selector_counts_nested_sorted(T):
    rng = np.random.default_rng(T)
    L = 16
    E = rng.normal(size=(3, T, L, 4)).astype(np.float32)
    G = num_groups_np(T)
    Tp = T // G
    prev = None
    for budget in (T * L // 8, T * L // 4, T * L // 2, T * L):
        idx = select_group_dynamic_np(E, budget=budget)
        k = keep_per_group_np(T, L, budget=budget)
        assert idx.shape == (3, G * k) and idx.dtype == np.int64
        assert np.all(np.diff(idx, axis=1) > 0)
        for g in range(G):  # k per group
            assert np.all(((idx >= g * Tp * L) & (idx < (g + 1) * Tp * L)).sum(1) == k)
        if prev is not None:  # nested across budgets
            for b in range(3):
                assert set(prev[b]) <= set(idx[b])
        prev = idx
    np.testing.assert_array_equal(idx, np.tile(np.arange(T * L), (3, 1)))  # full budget = identity


def test_numpy_selector_keeps_top_scores():
    rng = np.random.default_rng(5)
    E = rng.normal(size=(2, 6, 9, 4))
    idx = select_group_dynamic_np(E, keep_per_group=4)
    s = group_scores_np(E)
    for b in range(2):
        for g in range(2):
            sg = s[b, g * 27:(g + 1) * 27]
            kept = [i - g * 27 for i in idx[b] if g * 27 <= i < (g + 1) * 27]
            assert sorted(kept) == sorted(np.argsort(-sg, kind="stable")[:4].tolist())


# ------------------------------------------------------------------ torch model
@pytest.mark.parametrize("T,ratio,kpg", [(8, 0.5, None), (6, 0.3, None), (8, None, 5), (2, 0.75, None)])
def test_torch_selection_matches_numpy(T, ratio, kpg):
    m = tiny_model(seed=2)
    x = video(2, T, 56, 56, seed=T)
    with torch.no_grad():
        m(x, masking_ratio=ratio, keep_per_group=kpg)
        E = m.patch_embed(x).numpy()
    ref = select_group_dynamic_np(E, masking_ratio=ratio, keep_per_group=kpg)
    got = m.last_kept_index.numpy()
    np.testing.assert_array_equal(got, ref)


def test_selection_equals_forward_on_gathered_tokens():
    """Masked forward == blocks run on [cls; tokens+pos gathered at kept indices]."""
    m = tiny_model(seed=4)
    x = video(2, 8, 56, 56, seed=9)
    with torch.no_grad():
        h_sel = m.forward_features(x, masking_ratio=0.6)
        idx = m.last_kept_index
        E = m.patch_embed(x)
        B, T, L, C = E.shape
        tok = torch.cat([m.cls_token.expand(B, -1, -1), E.reshape(B, T * L, C)], 1) + m.pos_embed_for(T, 4, 4)
        assert m.pos_embed_for(T, 4, 4).shape == (1, 1 + T * L, C)
        body = torch.stack([tok[b, 1:][idx[b]] for b in range(B)])
        h = torch.cat([tok[:, :1], body], 1)
        for blk in m.blocks:
            h = blk(h)
    assert h_sel.shape == (2, 1 + 4 * int(0.4 * 2 * 16), 32)
    torch.testing.assert_close(h_sel, h, rtol=1e-5, atol=1e-5)


def test_forward_outputs_and_batch1():
    m = tiny_model(seed=3)
    x = video(2, 8, 56, 56, seed=1)
    with torch.no_grad():
        logits = m(x, output_head=1)
        l1 = m(x[:1], output_head=1)
        lz, z = m(x, output_head=2, return_cls=True)
        lp, p = m(x, return_cls=True, return_projected=True, align_proj=1)
        lm1 = m(x[1:], masking_ratio=0.5)
        lm2 = m(x, masking_ratio=0.5)
        l0 = m(x, masking_ratio=0.0)
        lnone = m(x)
    assert logits.shape == (2, 5) and l1.shape == (1, 5)
    torch.testing.assert_close(l1[0], logits[0], rtol=1e-4, atol=1e-4)  # B=1 works, batch-independent
    torch.testing.assert_close(lm1[0], lm2[1], rtol=1e-4, atol=1e-4)
    assert z.shape == (2, 48) and p.shape == (2, 48)
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(lz, m.head[2](m.fc_norm(z)))
    torch.testing.assert_close(l0, lnone, rtol=1e-5, atol=1e-5)  # r = 0 keeps everything in order
    assert not torch.allclose(logits, lnone, atol=1e-3)  # heads differ
    assert not torch.allclose(lm2, lnone, atol=1e-3)  # selection matters
    assert torch.isfinite(logits).all()


def test_gelu_variants_and_nonsquare():
    x = video(1, 6, 56, 28, seed=2)  # H != W, T != t0 -> temporal + spatial resize
    a = tiny_model(seed=5, mlp_activation="gelu_tanh")
    b = tiny_model(seed=5, mlp_activation="gelu")
    with torch.no_grad():
        la, lb = a(x, masking_ratio=0.5), b(x, masking_ratio=0.5)
    assert la.shape == (1, 5)
    d = (la - lb).abs().max().item()
    assert 0 < d < 0.5


def test_odd_or_single_frame_groups_raise():
    m = tiny_model()
    with pytest.raises(ValueError):
        m(video(1, 4, 56, 56), masking_ratio=0.5)  # G=4, T'=1
    with pytest.raises(ValueError):
        m(video(1, 3, 56, 56), masking_ratio=0.5)
    m(video(1, 4, 56, 56))  # no selection: fine


def test_init_perturbed_deterministic_and_nontrivial():
    a, b, c = tiny_model(seed=7), tiny_model(seed=7), tiny_model(seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], sc[k]) for k in sa)
    g = sa["blocks.0.ls1.gamma"]
    assert 0.5 < g.mean().item() < 1.5 and g.std().item() > 0.02


# ------------------------------------------------------------------ B.3 resize
def _np_linear(v, out):  # along axis 0, SPEC B.3 formula
    n = v.shape[0]
    s = n / out
    res = []
    for j in range(out):
        src = max(0.0, s * (j + 0.5) - 0.5)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        res.append((1 - lam) * v[i0] + lam * v[i1])
    return np.stack(res)


def _np_bicubic_1d(v, out, A=-0.75):  # along axis 0, SPEC B.3 formula
    n = v.shape[0]
    s = n / out
    res = []
    for j in range(out):
        src = s * (j + 0.5) - 0.5
        i = int(math.floor(src))
        t = src - i
        w = [((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A,
             ((A + 2) * t - (A + 3)) * t * t + 1,
             ((A + 2) * (1 - t) - (A + 3)) * (1 - t) ** 2 + 1,
             ((A * (2 - t) - 5 * A) * (2 - t) + 8 * A) * (2 - t) - 4 * A]
        res.append(sum(wk * v[min(max(i - 1 + k, 0), n - 1)] for k, wk in enumerate(w)))
    return np.stack(res)


@pytest.mark.parametrize("shape,target", [((4, 4, 4, 3), (6, 7, 3)), ((5, 6, 4, 2), (2, 3, 5)),
                                          ((3, 4, 4, 2), (3, 4, 4))])
def test_torch_resize_pos_matches_spec_formulas(shape, target):
    g = np.random.default_rng(1).normal(size=shape)
    got = torch_resize_pos(g, *target)
    ref = g
    if shape[0] != target[0]:
        ref = _np_linear(ref, target[0])
    if shape[1:3] != target[1:]:
        ref = _np_bicubic_1d(ref.transpose(1, 0, 2, 3), target[1]).transpose(1, 0, 2, 3)
        ref = _np_bicubic_1d(ref.transpose(2, 0, 1, 3), target[2]).transpose(1, 2, 0, 3)
    assert got.shape == target + (shape[3],) and got.dtype == g.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    f32 = torch_resize_pos(g.astype(np.float32), *target)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, ref, rtol=1e-5, atol=1e-5)
