//! The consumer library (placeholder while the workspace is laid out).
