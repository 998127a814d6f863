"""requester."""
