"""tuneloop's composition layer: settings, the CLI and the app factory."""
