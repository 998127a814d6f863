"""Job sandboxes."""
