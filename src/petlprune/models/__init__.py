"""petlprune.models."""
