//! Support for tests that run against a real Kubernetes control plane.
