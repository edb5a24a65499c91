"""Model formats: one package per format, each a plugin with its reader and fix backend side by side."""
