"""Registers the molecule domain with diffkit (placeholder until the domain lands)."""
