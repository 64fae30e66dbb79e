"""Small pieces every package shares: the user-error type, value parsing and atomic file writes."""
