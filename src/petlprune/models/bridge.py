"""TOAST's linear bridge (Cannistraci et al., TMLR 2026; book/methods/toast.md) for layer-removal plans.

A removed span of blocks ``[a, b)`` is replaced by a map fitted in closed form on a few hundred training
images, without training: ``identity`` (today's plain removal) or a least-squares ``linear`` map from the
span's input tokens to its output tokens, one matrix shared by every token (TOAST's ``mode=1``:
``x.reshape(-1, d)`` → ``y.reshape(-1, d)``, ``lstsq``, no bias; ``toast/modules/module.py``).

Where the map sits: after the kept block just before the span (a forward hook on that block, the map a
registered submodule ``bridge_after`` of it), or, for a span at the start, before the first kept block
(``bridge_before``, a forward pre-hook). ``model.blocks`` keeps only real blocks, so depth, feature_info
and the adapter positions are as without a bridge. The map's weights are task weights
(``extra_task_parameters``: stored per task, charged by ``measure.stored_params`` as ``backbone``) and
frozen during re-training (:func:`freeze_bridges`): TOAST's maps are closed-form, never trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["Bridge", "removed_spans", "least_squares_map", "attach_bridges", "bridges", "freeze_bridges",
           "span_boundaries", "fit_bridges", "load_bridge_maps"]


class Bridge(nn.Module):
    """``y = x Wᵀ`` on every token (``W`` (d, d), identity-initialised): TOAST's linear translator."""

    closed_form = True  # fitted, never trained: measure.count_params does not count it as trainable

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return x @ self.weight.T

    def extra_task_parameters(self) -> list[nn.Parameter]:
        """Stored per task (``models.petl._task_param_ids``): the map is fitted on the task's images."""
        return [self.weight]


def removed_spans(kept: Sequence[int], total: int) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of blocks not in ``kept`` (original indices), in forward order."""
    keep = set(int(i) for i in kept)
    spans, start = [], None
    for i in range(total + 1):
        inside = i < total and i not in keep
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            spans.append((start, i))
            start = None
    return spans


def least_squares_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``W`` (d_out, d_in) minimising ``‖x Wᵀ − y‖²`` (x (n, d_in), y (n, d_out)), in float64."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"least_squares_map: x and y must be (n, d) with the same n, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    sol = torch.linalg.lstsq(x.double(), y.double(), driver="gelsd").solution  # (d_in, d_out)
    return sol.T.to(x.dtype).contiguous()


def _after_hook(module: nn.Module, args, output):  # forward hook: the span's map after its kept block
    return module.bridge_after(output)


def _before_hook(module: nn.Module, args):  # forward pre-hook: a span at the start, before block 0 kept
    return (module.bridge_before(args[0]), *args[1:])


def span_boundaries(kept: Sequence[int], total: int) -> list[tuple[int, int, int, str]]:
    """Per removed span: ``(a, b, position in the kept blocks, "after" | "before")``."""
    kept = [int(i) for i in kept]
    out = []
    for a, b in removed_spans(kept, total):
        if a > 0:
            out.append((a, b, kept.index(a - 1), "after"))
        else:
            out.append((a, b, 0, "before"))
    return out


def attach_bridges(model: nn.Module, kept: Sequence[int], total: int) -> nn.Module:
    """Give a pruned model (``surgery.keep_blocks`` already applied) an identity bridge per removed span."""
    dim = int(model.embed_dim)
    for _a, _b, pos, where in span_boundaries(kept, total):
        block = model.blocks[pos]
        if where == "after":
            block.bridge_after = Bridge(dim)
            block.register_forward_hook(_after_hook)
        else:
            block.bridge_before = Bridge(dim)
            block.register_forward_pre_hook(_before_hook)
    return model


def bridges(model: nn.Module) -> list[Bridge]:
    return [m for m in model.modules() if isinstance(m, Bridge)]


def freeze_bridges(model: nn.Module) -> nn.Module:
    """Closed-form maps are not re-trained: only the shared recipe's task weights are."""
    for b in bridges(model):
        b.requires_grad_(False)
    return model


@torch.no_grad()
def _boundary_tokens(model: nn.Module, images: torch.Tensor, points: set[int]) -> dict[int, torch.Tensor]:
    """Tokens entering block ``p`` of the UNPRUNED model for each ``p`` in ``points`` (p = depth: the
    last block's output, before the final norm), flattened to (n·T, d)."""
    out: dict[int, list[torch.Tensor]] = {p: [] for p in points}
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)  # (B, T, d): the input of block 0
    for i, block in enumerate(model.blocks):
        if i in out:
            out[i].append(x.reshape(-1, x.shape[-1]))
        x = block(x)
    if len(model.blocks) in out:
        out[len(model.blocks)].append(x.reshape(-1, x.shape[-1]))
    return {p: torch.cat(v) for p, v in out.items()}


def fit_bridges(model: nn.Module, kept: Sequence[int], loader: Iterable, samples: int,
                device: str | torch.device = "cpu") -> dict[int, torch.Tensor]:
    """Least-squares map per removed span, fitted on the first ``samples`` images of ``loader``.

    Args:
        model: the UNPRUNED task model (its forward gives each span's input and output).
        kept: the Plan's kept blocks (original indices).
        loader: (images, labels) batches of the run's training split, in a fixed order.
        samples: how many images (TOAST's ``samples_to_extract``, default 500).

    Returns:
        {span start a: W (d, d)}, for :func:`load_bridge_maps`.
    """
    total = len(model.blocks)
    spans = removed_spans(kept, total)
    points = {a for a, _ in spans} | {b for _, b in spans}
    model = model.to(device).eval()
    xs: dict[int, list[torch.Tensor]] = {p: [] for p in points}
    seen = 0
    for images, _ in loader:
        images = images[: samples - seen].to(device)
        for p, t in _boundary_tokens(model, images, points).items():
            xs[p].append(t.float().cpu())
        seen += images.shape[0]
        if seen >= samples:
            break
    if seen == 0:
        raise ValueError("fit_bridges: the loader gave no images")
    tokens = {p: torch.cat(v) for p, v in xs.items()}  # (seen·T, d)
    return {a: least_squares_map(tokens[a], tokens[b]) for a, b in spans}


def load_bridge_maps(model: nn.Module, kept: Sequence[int], total: int, maps: dict[int, torch.Tensor]) -> None:
    """Copy fitted maps ({span start: W}) into the bridges :func:`attach_bridges` made."""
    with torch.no_grad():
        for a, _b, pos, where in span_boundaries(kept, total):
            bridge = getattr(model.blocks[pos], f"bridge_{where}")
            bridge.weight.copy_(maps[a])
