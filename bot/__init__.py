"""User-facing channels: the web widget (and, later, the Slack app and reviewer pages)."""
