"""Structural edits of a (PETL-injected) timm ViT: keep a subset of its blocks; share or drop adapters.

``keep_blocks``: the pruned model keeps the patch embedding, the class/position embeddings, the
ORIGINAL final norm and the trained head (SLS's pruned model), and stays a normal timm
``VisionTransformer``: ``forward``, ``forward_intermediates`` and ``feature_info`` all see the new depth.

``share_adapters`` / ``drop_adapters`` work on adapter positions (every ``Parallel`` wrapper, in forward
order: block by block, attention before MLP): a shared position runs another position's module object
(weight tying, stored once); a dropped position runs its backbone module alone.

``slice_channels`` turns a channel-masked SPLoRA model (SPA, fine-pruning) into a smaller dense timm model:
``W + C R`` fused and the kept rows/columns sliced into plain ``nn.Linear`` layers, attention heads
removed (``num_heads``/``attn_dim`` updated), so the measured speed-up is real.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from petlprune.models.petl import Parallel, petl_wrappers

__all__ = ["keep_blocks", "original_block_indices", "adapter_positions", "share_adapters", "drop_adapters",
           "slice_channels", "recover_blocks", "drop_attention"]


def original_block_indices(model: nn.Module) -> list[int]:
    """Indices, in the unpruned backbone, of the blocks the model runs (0..depth-1 if never pruned)."""
    return list(getattr(model, "kept_blocks", range(len(model.blocks))))


def keep_blocks(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """Keep only the blocks ``indices`` (0-based, ascending), in place.

    Args:
        model: a timm ``VisionTransformer`` (possibly with PETL modules inside its blocks).
        indices: positions in the CURRENT ``model.blocks`` to keep, strictly ascending.

    Returns:
        The same model, ``model.blocks`` an ``nn.Sequential`` of the kept blocks (with their PETL
        modules), ``model.kept_blocks`` the kept indices in the original backbone.
    """
    depth = len(model.blocks)
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("keep_blocks: at least one block must be kept")
    bad = [i for i in idx if not 0 <= i < depth]
    if bad:
        raise ValueError(f"keep_blocks: indices {bad} out of range for a model with {depth} blocks")
    if idx != sorted(set(idx)):
        raise ValueError(f"keep_blocks: indices must be strictly ascending (block order is the forward order): {idx}")
    original = original_block_indices(model)
    info = model.feature_info[0] if getattr(model, "feature_info", None) else {}
    model.blocks = nn.Sequential(*[model.blocks[i] for i in idx])
    model.kept_blocks = [original[i] for i in idx]
    # forward_intermediates reads len(model.blocks); feature_info and timm's recorded model args must agree.
    model.feature_info = [
        dict(module=f"blocks.{j}", num_chs=info.get("num_chs", model.embed_dim), reduction=info.get("reduction"))
        for j in range(len(idx))
    ]
    try:
        from timm.models._input import update_model_args
    except ImportError:  # pragma: no cover - older timm has no reconstruction args
        pass
    else:
        if hasattr(model, "_model_args"):
            update_model_args(model, depth=len(idx))
    return model


def adapter_positions(model: nn.Module) -> list[Parallel]:
    """Every adapter position (``Parallel`` wrapper) in forward order: block-major, attention before MLP."""
    return [w for wrappers in petl_wrappers(model).values() for w in wrappers]


def _position(positions: list[Parallel], p: int | str, what: str) -> int:
    try:
        i = int(p)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: position {p!r} is not an integer") from None
    if not 0 <= i < len(positions):
        raise ValueError(f"{what}: position {i} out of range for a model with {len(positions)} adapter positions")
    return i


def share_adapters(model: nn.Module, sharing: Mapping[int | str, int]) -> nn.Module:
    """Make each position ``p`` run the module of position ``sharing[p]``, in place.

    Args:
        model: a PETL model.
        sharing: {position: serving position} (keys may be strings, as in a Plan's JSON). A serving
            position keeps its own module and must hold one.

    Returns:
        The same model; its task weights now hold each shared module once.
    """
    positions = adapter_positions(model)
    pairs = {_position(positions, p, "share_adapters"): _position(positions, src, "share_adapters")
             for p, src in sharing.items()}
    for p, src in pairs.items():
        if p == src:
            raise ValueError(f"share_adapters: position {p} cannot serve itself")
        if src in pairs:
            raise ValueError(f"share_adapters: position {src} serves position {p} but is itself shared")
        if positions[src].adapter is None:
            raise ValueError(f"share_adapters: position {src} has no adapter to share (dropped)")
    for p, src in pairs.items():
        positions[p].adapter = positions[src].adapter
    return model


def drop_adapters(model: nn.Module, drop: Iterable[int | str]) -> nn.Module:
    """Remove the adapters of the positions ``drop``, in place (their backbone modules stay)."""
    positions = adapter_positions(model)
    for p in [_position(positions, p, "drop_adapters") for p in drop]:
        positions[p].adapter = None
    return model


def slice_channels(model: nn.Module) -> nn.Module:
    """Fuse every SPLoRA layer (``W + C R``, masked bias) and keep only its unmasked channels, in place.

    Args:
        model: a SPLoRA model (``models.splora``) with its channel masks set.

    Returns:
        The same model with plain ``nn.Linear`` layers of the kept widths: per block the MLP hidden
        width is its kept channels and the attention runs its kept heads. Its outputs equal the masked
        model's (up to float rounding); it is for deployment and timing, not for further training.
    """
    import torch

    from petlprune.models.splora import channel_groups, get_masks, splora_layers

    masks = get_masks(model)
    groups = channel_groups(model)
    for name, mask in masks.items():
        if groups[name]["kind"] == "heads":
            attn = model.get_submodule(name)
            attn.num_heads = int(mask.sum().item())
            attn.attn_dim = attn.num_heads * attn.head_dim  # timm reshapes the heads' output to attn_dim
    with torch.no_grad():
        for name, layer in splora_layers(model).items():
            rows = layer.mask_out.nonzero().flatten()
            cols = layer.mask_in.nonzero().flatten()
            w = layer.fused_weight().index_select(0, rows).index_select(1, cols)  # (kept out, kept in)
            linear = nn.Linear(len(cols), len(rows), device=w.device, dtype=w.dtype)
            linear.weight.copy_(w)
            linear.bias.copy_(layer.adapter.bias.index_select(0, rows))
            linear.requires_grad_(False)  # deployment only: params_trainable must not count the sliced W
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    model.sliced_channels = {k: int(v.sum().item()) for k, v in masks.items()}
    return model


def _backbone_parameters(block: nn.Module) -> list[nn.Parameter]:
    """A recovered block's own backbone weights (its PETL modules are task weights already)."""
    from petlprune.models.petl import PetlModule

    petl = {id(p) for m in block.modules() if isinstance(m, PetlModule) for p in m.parameters()}
    return [p for p in block.parameters() if id(p) not in petl]


def recover_blocks(model: nn.Module, n: int) -> nn.Module:
    """Make the full weights of the last ``n`` kept blocks task weights, in place (recovery ``adapters+last{n}``).

    Lu et al. (book/methods/recovery.md) re-train the last kept layers with the head; here those blocks'
    backbone weights join the PETL modules and head: ``mark_trainable`` trains them, ``task_state_dict``
    stores them per task and ``measure.stored_params`` charges them (as ``backbone``).
    """
    import types

    depth = len(model.blocks)
    if not 0 <= int(n) <= depth:
        raise ValueError(f"recover_blocks: cannot recover the last {n} of {depth} kept blocks")
    for block in list(model.blocks)[depth - int(n):]:
        block.extra_task_parameters = types.MethodType(_backbone_parameters, block)
    return model


def _mlp_only_forward(self, x, *args, **kwargs):  # timm Block.forward without its attention sub-layer
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def drop_attention(model: nn.Module, blocks: Iterable[int]) -> nn.Module:
    """Remove the attention sub-layer (norm1, attn and its PETL, ls1) of the given blocks, in place.

    LLM-Drop's attention drop (book/methods/attn_drop.md): the residual stream skips the sub-layer, the
    MLP stays. The modules are deleted, so forward parameters, FLOPs and speed all see the removal.
    """
    import types

    for i in sorted({int(b) for b in blocks}):
        if not 0 <= i < len(model.blocks):
            raise ValueError(f"drop_attention: block {i} out of range for a model with {len(model.blocks)} blocks")
        block = model.blocks[i]
        block.norm1 = block.attn = block.ls1 = block.drop_path1 = None
        block.forward = types.MethodType(_mlp_only_forward, block)
        block.attention_dropped = True
    return model
