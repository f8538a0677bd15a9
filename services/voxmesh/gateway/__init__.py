"""The Envoy gRPC-web gateway configuration."""
