//! aarch64 platform.
#![no_std]
