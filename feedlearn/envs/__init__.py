"""Text environments with a gymnasium-like reset / step interface."""
