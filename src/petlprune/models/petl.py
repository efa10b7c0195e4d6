"""Parameter-efficient transfer learning (PETL) injected into timm ViT blocks by wrapping modules.

timm's ViT code is never forked: a PETL method replaces a block's ``mlp``, ``attn`` or ``attn.qkv`` by a
:class:`Parallel` wrapper that adds a small task module to the wrapped module's output,
``y = base(x) + adapter(x)``. Every task module starts as an exact zero map, so at initialisation a
PETL model computes exactly what its backbone computes.

Methods:
    adapter: AdaptFormer (Chen et al., NeurIPS 2022) parallel bottleneck on the MLP branch,
        ``h <- h + MLP(LN(h)) + s * W_up ReLU(W_down LN(h))`` (the paper's equation; the adapter sees
        norm2's output). AdaptFormer code defaults: ``s = 0.1``, dropout 0.1 on the bottleneck,
        W_down Kaiming-uniform, W_up and biases zero. Bottleneck 8 here (the paper uses 64 on ViT-B).
    convpass: Convpass (Jie & Deng 2022), two bypasses per block, parallel to attention and to the
        MLP, each fed the corresponding LayerNorm output: Linear down (d->8), QuickGELU, 3x3 conv on
        the patch grid, QuickGELU, dropout 0.1, Linear up (8->d), times ``s``. Prefix (CLS) tokens go
        through the same conv as a 1x1 image (only the centre tap acts), as in the Convpass code.
        Init as the Convpass code: W_down Xavier-uniform, conv = identity at the centre tap (or
        Xavier with ``xavier_init=True``), W_up and biases zero. The Convpass code searches ``s`` per
        task in {0.01, 0.1, 1, 10, 100}; its ``set_Convpass`` default, ``s = 1``, is ours.
    lora: LoRA (Hu et al. 2022) on ``attn.qkv`` (optionally ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``):
        ``W + (alpha / r) B A``, A Kaiming-uniform (a=sqrt 5, as loralib), B = 0.
    splora: SPA's SPLoRA (models/splora.py): masked ``W + C R`` and a task bias on qkv, proj, fc1, fc2
        (C = U(+-1e-4): near, not exactly, the backbone at init).
    linear: the head only. full: every weight.

A wrapper's output passes through the block's LayerScale and DropPath like the wrapped module's
(both are identities in our backbones; AdaptFormer adds its adapter after DropPath, Convpass drops its
bypass with the branch, as here).

Every task module defines ``init_weights()``, which timm's ``VisionTransformer.init_weights`` calls
after initialising the module's children, so re-running timm's init keeps the zero-output start.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petlprune.core.petl import PETL_NAMES, check_petl_options, petl_defaults
from petlprune.models.petl_base import PetlModule
from petlprune.models.splopa import inject_splopa
from petlprune.models.splora import inject_splora

__all__ = [
    "PETL_METHODS",
    "PETL_DEFAULTS",
    "PetlModule",
    "Bottleneck",
    "ConvBypass",
    "LowRank",
    "Parallel",
    "QuickGELU",
    "inject_petl",
    "mark_trainable",
    "petl_modules",
    "petl_wrappers",
    "task_state_dict",
    "load_task_state_dict",
    "TaskStateError",
]

# The names and every option each method takes, with its default, are declared torch-free in
# core/petl.py (the workflow checks a config with them); anything else is refused by inject_petl.
PETL_METHODS = PETL_NAMES
PETL_DEFAULTS: dict[str, dict[str, Any]] = petl_defaults()
_LORA_TARGETS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


class TaskStateError(RuntimeError):
    """Task weights do not match the model they are loaded into."""


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of the Convpass code (from CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(PetlModule):
    """AdaptFormer's adapter ``s * W_up dropout(ReLU(W_down x))``.

    Args:
        dim: token width d.
        bottleneck: hidden width.
        scale: the fixed scalar s.
        dropout: dropout on the bottleneck activations (AdaptFormer: 0.1).
    """

    def __init__(self, dim: int, bottleneck: int = 8, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.scale = float(scale)
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x)))) * self.scale  # (B, T, C)


class ConvBypass(PetlModule):
    """One Convpass bypass: down, QuickGELU, 3x3 conv on the token grid, QuickGELU, dropout, up, times s.

    Args:
        dim: token width d.
        grid_size: (H, W) patch grid of the model.
        num_prefix_tokens: tokens before the patch tokens (CLS, registers); each is convolved as a 1x1 image.
        bottleneck: hidden width (Convpass: 8).
        scale: the fixed scalar s.
        dropout: dropout before the up projection (Convpass: 0.1).
        xavier_init: Xavier-init the conv instead of the identity centre tap.
    """

    def __init__(
        self,
        dim: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        bottleneck: int = 8,
        scale: float = 1.0,
        dropout: float = 0.1,
        xavier_init: bool = False,
    ) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.scale = float(scale)
        self.xavier_init = bool(xavier_init)
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv2d(bottleneck, bottleneck, 3, 1, 1)
        self.act = QuickGELU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        if self.xavier_init:
            nn.init.xavier_uniform_(self.conv.weight)
        else:
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] = torch.eye(self.conv.out_channels)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        P, (H, W) = self.num_prefix_tokens, self.grid_size
        if N != P + H * W:
            raise ValueError(
                f"ConvBypass: {N} tokens, expected {P} prefix + {H}x{W} patches (input size differs from the model's)"
            )
        z = self.act(self.down(x))  # (B, N, b)
        b = z.shape[-1]
        patches = z[:, P:].reshape(B, H, W, b).permute(0, 3, 1, 2)  # (B, b, H, W)
        patches = self.conv(patches).permute(0, 2, 3, 1).reshape(B, H * W, b)
        parts = [patches]
        if P:
            prefix = z[:, :P].reshape(B * P, b, 1, 1)  # each prefix token is a 1x1 image
            parts.insert(0, self.conv(prefix).reshape(B, P, b))
        z = self.drop(self.act(torch.cat(parts, dim=1)))  # (B, N, b)
        return self.up(z) * self.scale  # (B, N, C)


class LowRank(PetlModule):
    """LoRA's update ``(alpha / r) x A^T B^T`` for a linear layer of shape (out, in).

    A and B are plain parameters (not ``nn.Linear``), and ``init_weights`` restores B = 0.

    Args:
        in_features: input width of the adapted layer.
        out_features: output width of the adapted layer.
        rank: r.
        alpha: LoRA's alpha; the update is scaled by alpha / r.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 8, alpha: float = 8.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        self.A = nn.Parameter(torch.empty(self.rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, self.rank))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha / r) B A, shape (out, in)."""
        return (self.B @ self.A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B) * self.scaling  # (..., out)


class Parallel(nn.Module):
    """``base(x, ...) + adapter(x)``: how every PETL module joins the backbone.

    ``adapter`` may be the same object in several wrappers (adapter sharing): it is then one set of
    weights, stored once and trained by the gradients of every position it serves. ``adapter=None``
    is a pruned position: the wrapper computes ``base(x)`` alone.

    Args:
        base: the wrapped backbone module (timm ``Mlp``, ``Attention`` or ``nn.Linear``).
        adapter: the task module, fed the same input as ``base``, or None.
    """

    def __init__(self, base: nn.Module, adapter: PetlModule | None) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        return out if self.adapter is None else out + self.adapter(x)


def _options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    return check_petl_options(method, options)  # the defaults, every value checked (core/petl.py)


def inject_petl(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Add PETL modules to every block of a timm ViT, in place.

    Args:
        model: a timm ``VisionTransformer`` (``model.blocks`` of timm ``Block``), without PETL yet.
        method: one of :data:`PETL_METHODS`.
        **options: method options (see :data:`PETL_DEFAULTS`); unknown ones are errors.

    Returns:
        The same model, with ``model.petl_method`` and ``model.petl_options`` recorded.
    """
    opts = _options(method, options)
    if getattr(model, "petl_method", None) is not None:
        raise ValueError(f"model already has PETL method {model.petl_method!r}; inject once")
    dim = model.embed_dim
    for block in model.blocks:
        if method == "adapter":
            block.mlp = Parallel(block.mlp, Bottleneck(dim, opts["bottleneck"], opts["scale"], opts["dropout"]))
        elif method == "convpass":
            kw = dict(grid_size=model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens,
                      bottleneck=opts["bottleneck"], scale=opts["scale"], dropout=opts["dropout"],
                      xavier_init=opts["xavier_init"])
            block.attn = Parallel(block.attn, ConvBypass(dim, **kw))
            block.mlp = Parallel(block.mlp, ConvBypass(dim, **kw))
        elif method == "lora":
            targets = list(opts["targets"])
            bad = [t for t in targets if t not in _LORA_TARGETS]
            if bad or not targets:
                raise ValueError(f"lora targets {targets}: expected a non-empty subset of {list(_LORA_TARGETS)}")
            for target in targets:
                parent_name, child_name = _LORA_TARGETS[target]
                parent = getattr(block, parent_name)
                linear = getattr(parent, child_name)
                if not isinstance(linear, nn.Linear):
                    raise TypeError(f"lora target {target}: {type(linear).__name__} is not nn.Linear")
                lora = LowRank(linear.in_features, linear.out_features, opts["rank"], opts["alpha"])
                setattr(parent, child_name, Parallel(linear, lora))
    if method == "splora":
        inject_splora(model, opts["rank"], init=opts["init"])
    if method == "splopa":
        inject_splopa(model, opts["block"], opts["prototypes"], opts["targets"])
    device = next(model.parameters()).device
    model.to(device)
    model.petl_method = method
    model.petl_options = opts
    return model


def _method(model: nn.Module) -> str:
    method = getattr(model, "petl_method", None)
    if method is None:
        raise ValueError("model has no PETL method recorded: call inject_petl(model, method) first")
    return method


def petl_modules(model: nn.Module) -> dict[int, list[PetlModule]]:
    """Block index -> the task modules in that block, in forward order (shared modules appear in each block)."""
    return {i: [m for m in block.modules() if isinstance(m, PetlModule)] for i, block in enumerate(model.blocks)}


def petl_wrappers(model: nn.Module) -> dict[int, list[Parallel]]:
    """Block index -> the :class:`Parallel` wrappers in that block (the adapter positions), in forward order."""
    return {i: [m for m in block.modules() if isinstance(m, Parallel)] for i, block in enumerate(model.blocks)}


def _task_param_ids(model: nn.Module) -> set[int]:
    ids = {id(p) for m in model.modules() if isinstance(m, PetlModule) for p in m.parameters()}
    ids |= {id(p) for p in model.get_classifier().parameters()}
    # Backbone weights a method trains per task (fine-pruning's W) are task weights too.
    ids |= {id(p) for m in model.modules() if hasattr(m, "extra_task_parameters") for p in m.extra_task_parameters()}
    return ids


def mark_trainable(model: nn.Module, method: str | None = None) -> nn.Module:
    """Freeze the backbone and unfreeze the task weights: PETL modules + head (linear: head; full: all).

    Args:
        model: a model prepared by :func:`inject_petl`.
        method: the PETL method, checked against the one recorded on the model (None: use that one).
    """
    recorded = _method(model)
    if method is not None and method != recorded:
        raise ValueError(f"mark_trainable({method!r}) on a model injected with {recorded!r}")
    if recorded == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    task = _task_param_ids(model)
    for p in model.parameters():
        p.requires_grad_(id(p) in task)
    return model


def task_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The task-specific weights: PETL modules + head (full: everything), shared modules once.

    Keys are the model's parameter names; a module shared by several positions is stored under its
    first name only (``named_parameters`` de-duplicates), so the figure is what a task must store.
    """
    if _method(model) == "full":
        items = [*model.named_parameters(), *model.named_buffers()]
    else:
        task = _task_param_ids(model)
        items = [(k, p) for k, p in model.named_parameters() if id(p) in task]
    return {k: v.detach().cpu().clone() for k, v in items}


def load_task_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "task weights") -> None:
    """Load task weights strictly: the keys must be exactly :func:`task_state_dict`'s, shapes equal.

    Args:
        model: the rebuilt model (backbone + PETL, with any Plan already applied).
        state: the stored task weights.
        source: what to name in errors (usually the file).
    """
    expected = {k: v.shape for k, v in [*model.named_parameters(), *model.named_buffers()]}
    wanted = task_state_dict(model).keys()
    unexpected = sorted(set(state) - set(wanted))
    missing = sorted(set(wanted) - set(state))
    if unexpected or missing:
        raise TaskStateError(
            f"{source}: task weights do not match the rebuilt model"
            + (f"; keys not consumed: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
               if unexpected else "")
            + (f"; missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "")
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key]):
            raise TaskStateError(
                f"{source}: shape mismatch for key {key!r}: stored {tuple(value.shape)}, "
                f"model {tuple(expected[key])}"
            )
    model.load_state_dict(state, strict=False)  # keys checked above; frozen weights stay as built
