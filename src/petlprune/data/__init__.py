"""petlprune.data."""
