"""pytest fixtures for plugin authors (filled in by the plugin-development work)."""
