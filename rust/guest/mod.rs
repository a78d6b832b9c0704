//! (guest: under construction)
