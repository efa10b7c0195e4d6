"""petlprune.report."""
