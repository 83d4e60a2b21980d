"""Registers the audio domain with diffkit (placeholder until the domain lands)."""
