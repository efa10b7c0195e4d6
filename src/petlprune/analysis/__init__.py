"""petlprune.analysis."""
