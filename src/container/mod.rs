//! Containers: lifecycle, records and OCI spec generation.

pub mod spec;
