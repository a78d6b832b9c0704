//! (device: under construction)
