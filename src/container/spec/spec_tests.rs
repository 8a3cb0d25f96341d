//! Tests for `spec`.
