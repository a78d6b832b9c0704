//! (machine: under construction)
