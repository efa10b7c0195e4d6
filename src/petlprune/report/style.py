"""One look for every figure of the book: the method → (colour, marker) map and the text sizes.

Why one map: a reader who learnt that SLS is the blue circle on the summary's trade-off panels must
find the blue circle on every task page too, and two methods must never share a look (issue 26:
"two methods share a blue"). Every figure of ``petlprune.report`` takes a method's look from
:func:`method_style`; ``tests/test_report_style.py`` checks that the methods of every tier config
(``workflow/config/*.yaml``) get distinct (colour, marker) pairs.

A registered method has its own colour and marker. A config instance (``sls_raw``, ``pear_nn_scale``)
keeps its method's colour, so a family reads as one hue, and gets its own marker. The unpruned
fine-tune is the black star; a re-trained unpruned control (``{petl}_unpruned``) is grey.

Text sizes (:data:`RC`): the book's body text is 16 px. A figure ``FIG_WIDTH`` inches wide saved at
``DPI`` is shown at most at the content column's width (about 850 px at a 1280-px window), so a size
of ``s`` points is drawn at ``s / 72 * min(DPI, 850 / FIG_WIDTH)`` px: 12 pt at 8 in gives 17.7 px.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import TypeVar

import matplotlib as mpl

from petlprune.report.load import FINETUNE

__all__ = ["RC", "DPI", "FIG_WIDTH", "FONT", "METHOD_STYLE", "INSTANCE_MARKERS", "method_style", "styled"]

DPI = 110          # the notebooks' inline figure dpi (notebooks/*.ipynb set the same)
FIG_WIDTH = 8.0    # inches: a full-width figure; at DPI it is 880 px, about the content column
FONT = 12          # points: axis labels, titles, legends
RC = {
    "font.size": FONT,
    "axes.titlesize": FONT,
    "axes.labelsize": FONT,
    "xtick.labelsize": FONT - 1,
    "ytick.labelsize": FONT - 1,
    "legend.fontsize": FONT - 1,
    "figure.titlesize": FONT + 1,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}

# Registered methods: a colour of their own (tab10, then darker hues for the rest) and a marker of their own.
METHOD_STYLE: dict[str, tuple[str, str]] = {
    FINETUNE: ("#000000", "*"),
    "sls": ("#1f77b4", "o"),
    "sglp": ("#d62728", "D"),
    "pear": ("#2ca02c", "^"),
    "spa": ("#9467bd", "p"),
    "spa_block": ("#e377c2", "h"),
    "fine_pruning": ("#8c564b", "H"),
    "last_k": ("#17becf", "s"),
    "random": ("#bcbd22", "X"),
    "block_influence": ("#ff7f0e", "v"),
    "angular": ("#00441b", "<"),
    "taylor_layer": ("#6a3d9a", ">"),
    "depgraph": ("#a50026", "d"),
    "adapter_drop": ("#7fbf7b", "P"),
    # the field's successors (book/methods/p3b.md, attn_drop.md, lora_drop.md)
    "p3b": ("#b15928", "8"),
    "attn_drop": ("#1b9e77", "x"),
    "lora_drop": ("#e7298a", "+"),
}
_CONTROL_COLOUR = "#7f7f7f"  # a re-trained unpruned control: the reference every paired comparison uses
# markers an instance may take, in order; its method's own marker is skipped
INSTANCE_MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "h", "H", "X", "P", "d", "8", "*")
# Instances of the tier configs, pinned so that a family never draws two members alike; an instance
# not listed here gets a marker by a stable hash (the tier test says when that collides).
_INSTANCE_MARKER: dict[str, str] = {
    "sls_raw": "s", "sls_ch": "^", "sls_db": "v",
    "sglp_finetuned": "o", "sglp_k3": "<", "sglp_k5": ">",
    "spa_gradient": "o", "spa_taylor": "s", "spa_recovered": "D",
    "pear_mi_none": "o", "pear_mi_init": "s", "pear_mi_distill": "D", "pear_nn_none": "v",
    "pear_nn_distill": "<", "pear_drop_distill": ">", "pear_nn_init_elementwise": "p",
    "pear_nn_scale": "h", "pear_mi_scale": "H",
    "sglp_official_cuts": "^", "sglp_cls": "v",
    "last_k_rec1": "^", "last_k_rec2": "v", "last_k_bridge": "D", "p3b_bridge": "o",
    "lora_drop_none": "D", "pear_lora": "X",
    "adapter_unpruned": "P", "splora_unpruned": "X", "splopa_unpruned": "d",
}


def _family(method: str) -> str | None:
    """The registered method an instance name extends (longest ``{method}_`` prefix), or None."""
    bases = [m for m in METHOD_STYLE if m != FINETUNE and method.startswith(m + "_")]
    return max(bases, key=len) if bases else None


@functools.cache
def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method or config instance name, the same in every figure.

    >>> method_style("sls")
    ('#1f77b4', 'o')
    >>> method_style("sls_raw")
    ('#1f77b4', 's')
    """
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    if method.endswith("_unpruned"):
        colour = _CONTROL_COLOUR
    else:
        family = _family(method)
        colour = METHOD_STYLE[family][0] if family else _hash_colour(method)
    if method in _INSTANCE_MARKER:
        return colour, _INSTANCE_MARKER[method]
    family = _family(method)
    own = METHOD_STYLE[family][1] if family else None
    choices = [m for m in INSTANCE_MARKERS if m != own]
    return colour, choices[zlib.crc32(method.encode()) % len(choices)]


def _hash_colour(method: str) -> str:
    """A stable colour for a name the map does not know (tab20b, by checksum)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["tab20b"](zlib.crc32(method.encode()) % 20))


F = TypeVar("F", bound=Callable)


def styled(draw: F) -> F:
    """Run a figure function under :data:`RC`: matplotlib reads sizes when an artist is made, so every
    label, tick and legend of the figure gets the book's sizes whatever the caller's rcParams."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
