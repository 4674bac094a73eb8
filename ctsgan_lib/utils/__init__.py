"""Small shared helpers: atomic files, hardware description, CSV/JSON-lines logs, errors."""
