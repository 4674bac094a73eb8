"""Small shared helpers: atomic files, checkpoint I/O, hardware description, CSV/JSON-lines logs, autocast."""
