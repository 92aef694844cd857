"""One module per method: its config and its stages, composed from the layers below."""
