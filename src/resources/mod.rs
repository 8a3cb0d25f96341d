//! Resources: the containers' cgroups (v1 and v2) under one parent group, the pool.
//!
//! [`cgroupfs`] is the cgroup filesystem of either version behind one type; [`limits`]
//! writes the limits `docker update` changes into a running container's group; [`cpus`]
//! reserves CPUs and gives containers exclusive cores; [`elastic`] is the elastic-memory
//! controller.

pub mod cgroupfs;
pub mod cpus;
pub mod elastic;
pub mod limits;

pub use cgroupfs::{CgResult, CgroupError, Cgroups, Version};
pub use limits::Limits;
