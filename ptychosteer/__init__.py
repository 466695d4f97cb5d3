"""ptychosteer package."""
