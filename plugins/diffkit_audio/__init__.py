"""The built-in audio domain of diffkit."""
