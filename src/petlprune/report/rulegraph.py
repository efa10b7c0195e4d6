"""Draw Snakemake's rule graph (``snakemake --rulegraph`` DOT text) without Graphviz.

Graphviz is not a Python package and not installed everywhere, so the DOT that Snakemake prints
is parsed here (it uses a fixed, small subset: ``id[label = "rule", ...];`` and ``a -> b``) and laid
out in layers with networkx.
"""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
from matplotlib.figure import Figure

__all__ = ["parse_rulegraph", "rulegraph_figure"]

_NODE_RE = re.compile(r'^\s*(\w+)\s*\[\s*label\s*=\s*"((?:[^"\\]|\\.)*)"')
_EDGE_RE = re.compile(r"^\s*(\w+)\s*->\s*(\w+)\s*;?\s*$")
_SKIP_RE = re.compile(r"^\s*(digraph\b.*|(graph|node|edge)\s*\[.*|\}\s*|)$")


def parse_rulegraph(text: str, source: str | Path = "<rulegraph>") -> nx.DiGraph:
    """Parse Snakemake's rule-graph DOT into a DiGraph of rule names (edge: producer → consumer).

    Args:
        text: the DOT text.
        source: file name used in error messages.

    Raises:
        ValueError: a line that is not part of Snakemake's DOT subset, an edge to an undeclared
            node, or no node at all.
    """
    labels: dict[str, str] = {}
    edges: list[tuple[str, str, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if m := _NODE_RE.match(line):
            # --dag labels hold wildcards after "\n"; the rule is the first line
            labels[m[1]] = m[2].split("\\n")[0]
        elif m := _EDGE_RE.match(line):
            edges.append((m[1], m[2], lineno))
        elif not _SKIP_RE.match(line):
            raise ValueError(f"{source}:{lineno}: not Snakemake rule-graph DOT: {line.strip()!r}")
    if not labels:
        raise ValueError(f"{source}: no rule in the graph (is it the output of `snakemake --rulegraph`?)")
    graph = nx.DiGraph()
    graph.add_nodes_from(labels.values())
    for a, b, lineno in edges:
        if a not in labels or b not in labels:
            raise ValueError(f"{source}:{lineno}: edge {a} -> {b} names an undeclared node")
        if a != b:  # a rule feeding itself (a 'matched' plan reads the SLS plan) is not a layer
            graph.add_edge(labels[a], labels[b])
    return graph


def rulegraph_figure(graph: nx.DiGraph) -> Figure:
    """Layered drawing: each rule in the layer after its deepest input, data flowing left to right."""
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError("the rule graph has a cycle")
    layers = list(nx.topological_generations(graph))
    for depth, layer in enumerate(layers):
        for node in layer:
            graph.nodes[node]["layer"] = depth
    pos = nx.multipartite_layout(graph, subset_key="layer", align="vertical")
    width = max(len(layers) * 1.6, 4.0)
    height = max(max(len(layer) for layer in layers) * 0.55, 2.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    nx.draw_networkx_edges(graph, pos, ax=ax, edge_color="0.6", arrows=True, arrowsize=10,
                           node_size=1800, node_shape="s")
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8,
                            bbox={"boxstyle": "round,pad=0.3", "fc": "#e8f0fa", "ec": "#3b6ea8"})
    ax.set_axis_off()
    return fig
