//! The producer library (placeholder while the workspace is laid out).
