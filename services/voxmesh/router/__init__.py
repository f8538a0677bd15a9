"""The router (Voxer's node router): device connections, relay, updates streams."""
