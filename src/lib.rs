#![recursion_limit = "256"]

//! berthd: a container-host daemon that speaks the Docker Engine API (1.41).
//!
//! Layout (see `DESIGN.md`): [`master`] is the long-lived process that holds the listening
//! sockets, reaps shims and runs live upgrades of [`worker`] generations (over [`ctl`]);
//! [`server`] is the HTTP layer (router, handlers, the single error→status mapping);
//! [`container`], [`image`], [`network`] hold the logic; [`store`] is the metadata store;
//! [`shimclient`] speaks the shim protocol.

pub mod config;
pub mod container;
pub mod ctl;
pub mod error;
pub mod events;
pub mod image;
pub mod listener;
pub mod lxcfs;
pub mod master;
pub mod network;
pub mod resources;
pub mod server;
pub mod shimclient;
pub mod store;
pub mod upgrade_cli;
pub mod worker;
