"""The local stack: real servers and services under supervision."""
