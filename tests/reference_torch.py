"""Independent PyTorch reference of the FluxViT *plain path* (eval mode, float32).

Written from /work/shared/SPEC.md (sections A.1-A.5 and B.1-B.7) only; it is used by
the flux_jax test-suite as ground truth.  It is deliberately small and readable:

* the ``state_dict`` has exactly the official parameter names, shapes and order
  (SPEC A.2), so official checkpoints load with ``load_state_dict(strict=True)``;
* forward semantics follow SPEC B.1-B.6 (DPN patch embed, group-dynamic token
  selection, GPE + linear/bicubic pos resize, pre-RMSNorm blocks with QK-norm and LPE,
  attention-pooling projectors, shared fc_norm, heads, Linear decoders);
* no dropout / drop-path (eval only), no bf16, no flash-attn fused modules;
* differences from the official code that are deliberate (documented in-line):
  batch size 1 works (no ``.squeeze()`` bug), H != W is allowed (Hp, Wp are used instead
  of sqrt(L)), the pos grid is resized per axis whenever that axis' size differs, token
  ranking uses a *stable* argsort on ``-score`` (ties are implementation-defined in the
  official code).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RMSNorm",
    "LayerScale",
    "DepthwiseAffine",
    "PatchEmbedDPN",
    "Attention",
    "Mlp",
    "Block",
    "CrossAttention",
    "AttentionPoolingBlock",
    "LinearDecoder",
    "TorchFluxViT",
    "num_groups",
    "keep_per_group_from_ratio",
    "select_group_dynamic_torch",
    "torch_resize_pos",
    "init_perturbed_",
    "count_params",
]


# --------------------------------------------------------------------------- norms etc.
class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps)   (weight only, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DepthwiseAffine(nn.Module):
    """Holds ``depthwise_conv`` = Conv3d(C, C, kernel 1x1x1, groups=C) (official names).

    With a kernel of 1 this is a per-channel affine map ``w[c] * x[..., c] + b[c]``; the
    forward applies it on a channels-last tensor.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.depthwise_conv = nn.Conv3d(dim, dim, kernel_size=1, groups=dim, bias=True)

    def forward(self, x_channels_last: torch.Tensor) -> torch.Tensor:
        w = self.depthwise_conv.weight.reshape(-1)
        b = self.depthwise_conv.bias
        return x_channels_last * w + b


# --------------------------------------------------------------------------- patch embed
class PatchEmbedDPN(nn.Module):
    """SPEC B.1: RMSNorm(588) on raw patch pixels -> Conv3d(1,p,p) -> RMSNorm(C)."""

    def __init__(self, embed_dim: int, patch_size: int = 14, in_chans: int = 3, tubelet_size: int = 1):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.in_chans = in_chans
        k = (tubelet_size, patch_size, patch_size)
        # registration order = state_dict order: proj, norm, norm_before (SPEC A.2)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k, bias=True)
        self.norm = RMSNorm(embed_dim, eps=1e-6)
        self.norm_before = RMSNorm(tubelet_size * patch_size * patch_size * in_chans, eps=1e-6)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,c,T,H,W] -> [B, T*Hp*Wp, kt*p*p*c] with vector order (kt, py, px, c), c fastest."""
        B, c, T, H, W = x.shape
        p, kt = self.patch_size, self.tubelet_size
        x = x.reshape(B, c, T // kt, kt, H // p, p, W // p, p)
        #           0  1  2      3   4      5  6      7
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, Tt, Hp, Wp, kt, py, px, c
        return x.reshape(B, (T // kt) * (H // p) * (W // p), kt * p * p * c)

    def unpatchify(self, v: torch.Tensor, T: int, H: int, W: int) -> torch.Tensor:
        B = v.shape[0]
        p, kt, c = self.patch_size, self.tubelet_size, self.in_chans
        v = v.reshape(B, T // kt, H // p, W // p, kt, p, p, c)
        v = v.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, c, Tt, kt, Hp, py, Wp, px
        return v.reshape(B, c, T, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,T,H,W] -> E [B, T, L, C] (L = Hp*Wp, row-major h then w)."""
        B, c, T, H, W = x.shape
        p = self.patch_size
        if H % p or W % p or T % self.tubelet_size:
            raise ValueError(f"input {tuple(x.shape)} not divisible by patch {p}/tubelet {self.tubelet_size}")
        v = self.norm_before(self.patchify(x))
        x = self.proj(self.unpatchify(v, T, H, W))  # [B, C, T', Hp, Wp]
        Bc, C, Tt, Hp, Wp = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B, Tt, Hp * Wp, C)
        return self.norm(x)


# --------------------------------------------------------------------------- block
class Attention(nn.Module):
    """SPEC B.5 attention: qkv (no bias), QK-RMSNorm over full C, LPE on V before proj
    (without LPE: the InternVideo2 attention, SPEC D.2)."""

    def __init__(self, dim: int, num_heads: int, use_lpe: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        # registration order: qkv, proj, lpe, q_norm, k_norm
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.lpe = DepthwiseAffine(dim) if use_lpe else None
        self.q_norm = RMSNorm(dim, eps=1e-6)
        self.k_norm = RMSNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, D = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, C)
        q, k, v = qkv.unbind(2)  # each [B, N, C], channel order (head, head_dim)
        q = self.q_norm(q)
        k = self.k_norm(k)
        v_lpe = self.lpe(v) if self.lpe is not None else 0.0
        qh = q.reshape(B, N, H, D).transpose(1, 2)
        kh = k.reshape(B, N, H, D).transpose(1, 2)
        vh = v.reshape(B, N, H, D).transpose(1, 2)
        attn = ((qh * self.scale) @ kh.transpose(-2, -1)).softmax(dim=-1)
        a = (attn @ vh).transpose(1, 2).reshape(B, N, C)
        return self.proj(a + v_lpe)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu_tanh"):
        super().__init__()
        if activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"unknown mlp_activation {activation!r}")
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, activation: str,
                 use_lpe: bool = True):
        super().__init__()
        # registration order: norm1, attn, ls1, norm2, mlp, ls2
        self.norm1 = RMSNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, use_lpe)
        self.ls1 = LayerScale(dim)
        self.norm2 = RMSNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation)
        self.ls2 = LayerScale(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.ls1(self.attn(self.norm1(h)))
        h = h + self.ls2(self.mlp(self.norm2(h)))
        return h


# --------------------------------------------------------------------------- projectors
class CrossAttention(nn.Module):
    """SPEC A.5/B.6: Linear(no bias) + separate q/k/v_bias Parameters; proj to out_dim."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        all_dim = self.head_dim * num_heads
        # own Parameters first (state_dict order), then child Linears q, k, v, proj
        self.q_bias = nn.Parameter(torch.zeros(all_dim))
        self.k_bias = nn.Parameter(torch.zeros(all_dim))
        self.v_bias = nn.Parameter(torch.zeros(all_dim))
        self.q = nn.Linear(dim, all_dim, bias=False)
        self.k = nn.Linear(dim, all_dim, bias=False)
        self.v = nn.Linear(dim, all_dim, bias=False)
        self.proj = nn.Linear(all_dim, out_dim)

    def forward(self, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor) -> torch.Tensor:
        B, Nq, _ = xq.shape
        Nk = xk.shape[1]
        H, D = self.num_heads, self.head_dim
        q = F.linear(xq, self.q.weight, self.q_bias).reshape(B, Nq, H, D).transpose(1, 2)
        k = F.linear(xk, self.k.weight, self.k_bias).reshape(B, Nk, H, D).transpose(1, 2)
        v = F.linear(xv, self.v.weight, self.v_bias).reshape(B, Nk, H, D).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        self.last_attention = attn.mean(1)  # [B, Nq, Nk], head mean (the IV2 teacher's attn)
        x = (attn @ v).transpose(1, 2).reshape(B, Nq, H * D)
        return self.proj(x)


class AttentionPoolingBlock(nn.Module):
    """q_in = mean over all tokens (cls included); LN(eps 1e-5) on q/k/v inputs; no residual/MLP."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = x.mean(dim=1, keepdim=True)
        z = self.cross_attn(self.norm1_q(xq), self.norm1_k(x), self.norm1_v(x))
        return z[:, 0]  # [B, out_dim]; index (not squeeze) so B=1 works


class LinearDecoder(nn.Module):
    """Linear -> LayerNorm(eps 1e-5) -> L2 normalize over the last axis."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.head = nn.Linear(dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.head(x))
        return x / x.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- selection
def num_groups(T: int) -> int:
    """SPEC B.2: G = 4 if T % 4 == 0, 1 if T == 2, else 2."""
    if T % 4 == 0:
        return 4
    if T == 2:
        return 1
    return 2


def keep_per_group_from_ratio(masking_ratio: float, frames_per_group: int, L: int) -> int:
    """k = int((1 - r) * (T' * L)) with Python floats.

    The integer token count T'*L is formed first (SPEC B.2 examples: T=24, L=196,
    budget 3072 -> (1-r)*1176 = 767.999... -> k=767; ((1-r)*6)*196 would give 768).
    """
    return int((1 - masking_ratio) * (frames_per_group * L))


def select_group_dynamic_torch(E: torch.Tensor, masking_ratio: Optional[float] = None,
                               keep_per_group: Optional[int] = None) -> torch.Tensor:
    """Kept raster indices [B, G*k] (ascending) into the T*L token axis. SPEC B.2.

    Ranking: ``torch.argsort(-score, stable=True)`` (ties: earlier raster position wins;
    the official unstable argsort leaves ties implementation-defined).
    """
    B, T, L, C = E.shape
    if T % 2 != 0:
        raise ValueError(f"group-dynamic selection needs an even frame count, got T={T}")
    G = num_groups(T)
    Tp = T // G
    if Tp < 2:
        raise ValueError(f"T={T} gives {Tp} frame per group; selection is undefined (official crashes)")
    if keep_per_group is None:
        if masking_ratio is None:
            raise ValueError("need masking_ratio or keep_per_group")
        k = keep_per_group_from_ratio(masking_ratio, Tp, L)
    else:
        k = int(keep_per_group)
    if not 0 <= k <= Tp * L:
        raise ValueError(f"keep per group k={k} outside [0, {Tp * L}]")
    with torch.no_grad():
        Eg = E.detach().reshape(B * G, Tp, L, C)
        d = (Eg[:, 1:] - Eg[:, :-1]).norm(dim=-1)  # [BG, Tp-1, L]
        score = torch.cat([d[:, :1], d], dim=1).reshape(B * G, Tp * L)
        order = torch.argsort(-score, dim=1, stable=True)[:, :k]  # [BG, k]
        offs = (torch.arange(G, device=E.device) * (Tp * L)).repeat(B).unsqueeze(1)
        idx = (order + offs).reshape(B, G * k)
        idx, _ = torch.sort(idx, dim=1)
    return idx


# --------------------------------------------------------------------------- pos resize
def _resize_grid_torch(grid: torch.Tensor, T: int, Hp: int, Wp: int) -> torch.Tensor:
    """grid [t0, gh, gw, C] -> [T, Hp, Wp, C]; temporal linear then spatial bicubic
    (align_corners=False, no antialias), each step only when that size differs."""
    t0, gh, gw, C = grid.shape
    if t0 != T:
        x = grid.permute(1, 2, 3, 0).reshape(1, gh * gw * C, t0)  # series over time
        x = F.interpolate(x, size=T, mode="linear", align_corners=False)
        grid = x.reshape(gh, gw, C, T).permute(3, 0, 1, 2)
    if (gh, gw) != (Hp, Wp):
        x = grid.permute(0, 3, 1, 2)  # [T, C, gh, gw]
        x = F.interpolate(x, size=(Hp, Wp), mode="bicubic", align_corners=False)
        grid = x.permute(0, 2, 3, 1)
    return grid


def torch_resize_pos(grid_params: np.ndarray, T: int, Hp: int, Wp: int) -> np.ndarray:
    """numpy [t0, g0h, g0w, C] -> numpy [T, Hp, Wp, C] with PyTorch F.interpolate
    (linear over time, then bicubic A=-0.75 over space, align_corners=False).
    The dtype of the input is kept (float32 or float64)."""
    g = torch.from_numpy(np.ascontiguousarray(grid_params))
    with torch.no_grad():
        out = _resize_grid_torch(g, T, Hp, Wp)
    return out.contiguous().numpy()


# --------------------------------------------------------------------------- model
class TorchFluxViT(nn.Module):
    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, num_classes: int = 400, num_frames: int = 24,
                 img_size: int = 252, patch_size: int = 14, attn_pool_num_heads: int = 16,
                 clip_embed_dim: int = 768, mlp_activation: str = "gelu_tanh",
                 num_projectors: int = 3, num_decoders: int = 2):
        super().__init__()
        C = embed_dim
        self.embed_dim = C
        self.num_frames = num_frames
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size  # g0
        g0 = self.grid_size
        # registration order = official state_dict order (SPEC A.2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_frames * g0 * g0, C))
        self.gpe_proj = DepthwiseAffine(C)
        self.patch_embed = PatchEmbedDPN(C, patch_size)
        self.blocks = nn.ModuleList([Block(C, num_heads, mlp_ratio, mlp_activation) for _ in range(depth)])
        self.clip_projector = nn.ModuleList(
            [AttentionPoolingBlock(C, attn_pool_num_heads, clip_embed_dim) for _ in range(num_projectors)])
        self.head = nn.ModuleList([nn.Linear(clip_embed_dim, num_classes) for _ in range(num_projectors)])
        self.fc_norm = nn.LayerNorm(clip_embed_dim, eps=1e-5)
        self.final_clip_decoder_for_projs = nn.ModuleList(
            [LinearDecoder(clip_embed_dim, clip_embed_dim) for _ in range(num_decoders)])
        self.last_kept_index: Optional[torch.Tensor] = None

    # -- B.3
    def pos_embed_for(self, T: int, Hp: int, Wp: int) -> torch.Tensor:
        """[1, 1 + T*Hp*Wp, C]: cls_pos untouched; grid -> gpe affine -> resize."""
        C, t0, g0 = self.embed_dim, self.num_frames, self.grid_size
        cls_pos = self.pos_embed[:, :1]
        grid = self.pos_embed[0, 1:].reshape(t0, g0, g0, C)
        grid = self.gpe_proj(grid)
        grid = _resize_grid_torch(grid, T, Hp, Wp)
        return torch.cat([cls_pos, grid.reshape(1, T * Hp * Wp, C)], dim=1)

    def forward_features(self, x: torch.Tensor, masking_ratio: Optional[float] = None,
                         keep_per_group: Optional[int] = None) -> torch.Tensor:
        """Tokens after the last block (no final norm): [B, 1 + K, C]."""
        x = x.float()
        B, _, T, H, W = x.shape
        Hp, Wp = H // self.patch_size, W // self.patch_size
        E = self.patch_embed(x)  # [B, T, L, C]
        L, C = E.shape[2], E.shape[3]
        self.last_kept_index = None
        if masking_ratio is not None or keep_per_group is not None:
            idx = select_group_dynamic_torch(E, masking_ratio, keep_per_group)
            self.last_kept_index = idx
        else:
            idx = None
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), E.reshape(B, T * L, C)], dim=1)
        tokens = tokens + self.pos_embed_for(T, Hp, Wp)
        if idx is not None:  # B.4: gather kept tokens (raster order) and prepend cls
            body = torch.gather(tokens[:, 1:], 1, idx.unsqueeze(-1).expand(-1, -1, C))
            tokens = torch.cat([tokens[:, :1], body], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return tokens

    def forward(self, x: torch.Tensor, masking_ratio: Optional[float] = None, output_head: int = 0,
                return_cls: bool = False, return_projected: bool = False, align_proj: int = 0,
                keep_per_group: Optional[int] = None):
        h = self.forward_features(x, masking_ratio, keep_per_group)
        z = self.clip_projector[output_head](h)  # [B, clip_embed_dim]
        logits = self.head[output_head](self.fc_norm(z))
        if not return_cls:
            return logits
        if return_projected:
            return logits, self.final_clip_decoder_for_projs[align_proj](z)
        return logits, z


class TorchIV2Teacher(nn.Module):
    """The InternVideo2 teacher of SPEC D.2, written from the spec: FluxViT's blocks without
    DPN, GPE proj and LPE (a plain Conv3d patch embed, RMSNorm eps 1e-6, qk-RMSNorm over
    all heads, LayerScale, tanh-GELU MLP), a joint learned pos_embed [1, 1 + T0*G*G, C]
    with cls at row 0, one attention-pooling projector (query = mean of all tokens).

    forward returns what the teacher returns: the L2-normalised outputs of the blocks in
    `return_index` (cls first, [L, B, 1 + K, C], in block order), the L2-normalised
    projector output [B, clip], and the projector's head-mean attention over the tokens
    with the cls key dropped [B, K]. `keep_per_group` keeps that many tokens of each
    frame group (SPEC B.2) first, as the Flux-UMT teacher does on its token budget (D.5).
    """

    def __init__(self, embed_dim: int = 1408, depth: int = 40, num_heads: int = 16,
                 mlp_ratio: float = 48 / 11, num_frames: int = 8, img_size: int = 224,
                 patch_size: int = 14, attn_pool_num_heads: int = 16,
                 clip_embed_dim: int = 768, return_index=(39, 36, 33, 29, 26, 23)):
        super().__init__()
        C = embed_dim
        self.embed_dim, self.num_frames, self.patch_size = C, num_frames, patch_size
        self.grid_size = img_size // patch_size
        self.return_index = tuple(return_index)
        g0 = self.grid_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, C, (1, patch_size, patch_size),
                                          (1, patch_size, patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_frames * g0 * g0, C))
        self.blocks = nn.ModuleList([Block(C, num_heads, mlp_ratio, 'gelu_tanh', use_lpe=False)
                                     for _ in range(depth)])
        self.clip_projector = AttentionPoolingBlock(C, attn_pool_num_heads, clip_embed_dim)
        self.last_kept_index: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, keep_per_group: Optional[int] = None):
        B, _, T, H, W = x.shape
        Hp, Wp = H // self.patch_size, W // self.patch_size
        E = self.patch_embed.proj(x.float())  # [B, C, T, Hp, Wp]
        C = E.shape[1]
        E = E.permute(0, 2, 3, 4, 1).reshape(B, T, Hp * Wp, C)
        idx = None if keep_per_group is None else select_group_dynamic_torch(E, None, keep_per_group)
        self.last_kept_index = idx
        t0, g0 = self.num_frames, self.grid_size
        grid = _resize_grid_torch(self.pos_embed[0, 1:].reshape(t0, g0, g0, C), T, Hp, Wp)
        pos = torch.cat([self.pos_embed[:, :1], grid.reshape(1, T * Hp * Wp, C)], dim=1)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), E.reshape(B, T * Hp * Wp, C)], 1)
        tokens = tokens + pos
        if idx is not None:
            body = torch.gather(tokens[:, 1:], 1, idx.unsqueeze(-1).expand(-1, -1, C))
            tokens = torch.cat([tokens[:, :1], body], dim=1)
        z = {}
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in self.return_index:
                z[i] = tokens / tokens.norm(dim=-1, keepdim=True)
        out = self.clip_projector(tokens)
        attn = self.clip_projector.cross_attn.last_attention[:, 0, 1:]  # [B, K]
        return (torch.stack([z[i] for i in sorted(z)]), out / out.norm(dim=-1, keepdim=True),
                attn)


# --------------------------------------------------------------------------- helpers
def init_perturbed_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter with seeded random values so numerical comparisons are
    meaningful (LayerScale ~ N(1, 0.1), not 1e-5).  Deterministic given ``seed`` and the
    parameter order."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name == "cls_token":
                v = n
            elif name == "pos_embed":
                v = 0.5 * n
            elif name.endswith("depthwise_conv.weight") or leaf == "gamma":
                v = 1.0 + 0.1 * n
            elif leaf.endswith("bias"):  # bias, q_bias, k_bias, v_bias, depthwise biases
                v = 0.1 * n
            elif p.dim() == 1:  # RMSNorm / LayerNorm weights
                v = 1.0 + 0.1 * n
            else:  # Linear [out, in] / Conv3d [out, in, kt, kh, kw]
                fan_in = int(np.prod(p.shape[1:]))
                v = n / math.sqrt(fan_in)
            p.copy_(v.to(p.dtype))
    return model


def count_params(sd) -> int:
    """Total number of scalars in a state_dict (or any mapping name -> tensor/array)."""
    return int(sum(int(np.prod(tuple(v.shape))) for v in sd.values()))
