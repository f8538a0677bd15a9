"""The body store: message bodies as ordered chunks, and the live tail for late readers."""
