"""The built-in node library as a plugin: it registers through the same hooks as any other."""
