"""viewers."""
