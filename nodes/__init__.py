"""The built-in node library (SDXL pipeline nodes) and the model code it wraps."""
