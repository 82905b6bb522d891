#![cfg_attr(not(feature = "std"), no_std)]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

extern crate alloc;

pub mod core;
pub mod proto;

#[cfg(feature = "agent")]
pub mod agent;
