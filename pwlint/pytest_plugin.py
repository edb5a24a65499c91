"""``pytest --pwlint``: placeholder, being written."""
