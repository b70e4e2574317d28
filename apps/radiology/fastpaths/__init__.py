"""fastpaths."""
