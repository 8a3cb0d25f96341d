//! Tests of the image store.
