"""An independent reference of OpenCLIP's ViT ``CLIP`` forward, written from OpenCLIP's architecture with the
same parameter names (so an OpenCLIP state dict loads with ``strict=True``): pre-norm residual blocks over
``nn.MultiheadAttention`` (sequence-first), GELU MLPs named ``c_fc`` / ``c_proj``, a class token, ``ln_pre`` /
``ln_post``, ``x @ proj`` projections and a causal text transformer pooled at ``text.argmax(-1)``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, mlp)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(mlp, width))])
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:  # x: (L, N, D)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads, 4 * width) for _ in range(layers)])

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class Visual(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int, embed: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * width**-0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed) * width**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenClipReference(nn.Module):
    """OpenCLIP ``CLIP`` (ViT image tower, default text tower), random init with non-trivial norms."""

    def __init__(
        self, image: int = 32, patch: int = 8, v_width: int = 48, v_layers: int = 2, v_heads: int = 3,
        t_width: int = 32, t_layers: int = 2, t_heads: int = 2, vocab: int = 520, context: int = 16, embed: int = 24,
    ) -> None:  # fmt: skip
        super().__init__()
        self.visual = Visual(image, patch, v_width, v_layers, v_heads, embed)
        self.transformer = Transformer(t_width, t_layers, t_heads)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, t_width) * 0.01)
        self.ln_final = nn.LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.randn(t_width, embed) * t_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        mask = torch.full((context, context), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        with torch.no_grad():  # layer norms away from (1, 0) so a mis-mapped norm shows
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.1)

    def encode_image(self, image: Tensor) -> Tensor:
        return F.normalize(self.visual(image), dim=-1)

    def encode_text(self, text: Tensor) -> Tensor:
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), attn_mask=self.attn_mask).permute(1, 0, 2)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1)
