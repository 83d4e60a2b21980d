"""The built-in molecule domain of diffkit."""
