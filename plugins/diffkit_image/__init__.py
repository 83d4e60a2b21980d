"""The built-in image domain of diffkit."""
