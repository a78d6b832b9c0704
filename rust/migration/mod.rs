//! (migration: under construction)
