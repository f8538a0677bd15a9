"""voxmesh: a store-and-stream voice messaging backend on gRPC."""

__version__ = "0.1.0"
