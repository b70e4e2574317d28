"""imagefiles."""
