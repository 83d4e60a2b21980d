"""Registers the image domain with diffkit (placeholder until the domain lands)."""
