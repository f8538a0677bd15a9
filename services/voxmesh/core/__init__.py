"""The shared core: settings, logging, errors, the service runner."""
